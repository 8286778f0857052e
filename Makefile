# The two commands: `make demo` and `make test`. `make setup` is their shared first step.
.PHONY: setup demo test lint types unit integration lock clean

setup:
	@scripts/setup.sh

demo: setup
	.venv/bin/hoody demo

# The tests start a private PostgreSQL (scripts/postgres.sh); it is stopped when they end.
test: setup lint types
	@trap 'scripts/postgres.sh stop' EXIT; \
	  .venv/bin/pytest -q tests/unit && .venv/bin/pytest -q -x tests/integration

lint:
	.venv/bin/ruff check src tests
	.venv/bin/ruff format --check src tests

types:
	.venv/bin/mypy

unit:
	.venv/bin/pytest -q tests/unit

integration:
	.venv/bin/pytest -q -x tests/integration

# Regenerate the lock after changing dependencies in pyproject.toml.
lock:
	.venv/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 -o requirements.lock

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
