"""hoody: one isolated Linux container per customer, on a few servers."""

__all__ = ["__version__"]

__version__ = "0.1.0"
