"""Benchmarks that print JSON: `hoody bench provision|density`. Each runs on a scratch node."""
