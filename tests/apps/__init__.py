"""Small importable applications that the command-line tests start with ``aqueue worker``."""
