"""The package version (one place; recorded in stores and runs)."""

__version__ = "0.1.0"
