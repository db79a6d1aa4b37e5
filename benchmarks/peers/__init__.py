"""aqueue against its peers: ``python -m benchmarks.peers`` (``make bench-peers``).

The workloads of ``python -m benchmarks`` (enqueue one at a time, gathered and batched;
one worker draining a no-op backlog, its peak RSS; latency at fixed rates; server
memory per pending job; a FastAPI app enqueuing on each request), and a worker killed
mid-run at each system's defaults, run for aqueue and for arq, SAQ, streaq and taskiq
against the same embedded Valkey server in the same run, so that the report carries
ratios measured side by side rather than absolute claims.

Each peer lives in its own virtual environment (``.bench-venvs/<peer>/``, created on
first use): the runner, in aqueue's ``.venv``, starts every producer and worker as a
child process of the system's own interpreter.

Modules: ``runner`` (the command, the workloads' orchestration), ``harness`` (systems,
the run, child processes), ``crash`` and ``web`` (the workloads too big for the
runner), ``envs`` (the peers' virtual environments), ``report`` (results, JSON lines,
the side-by-side table), ``child`` (the driver every child process runs), ``webapp``
(the web app of each system), ``kit`` (what the driver and the adapters share), and one
thin ``adapter_<system>`` module per system, written against that system's documented
API and defaults.

This package's ``__init__``, ``kit``, ``child`` and the peers' adapters import only
the standard library and the peer itself: they run in the peers' environments, where
neither aqueue nor its dependencies are installed.
"""
