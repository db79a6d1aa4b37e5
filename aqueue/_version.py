"""The version of aqueue, in a module of its own so that anything in the package can
read it without importing ``aqueue`` itself."""

__version__ = "0.1.0"
