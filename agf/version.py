"""agf's version, in its own module so that any layer can read it without importing the package's face."""

__version__ = "0.1.0"
