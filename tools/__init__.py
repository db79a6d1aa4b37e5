"""Scripts the Makefile runs (not part of the aqueue package)."""
