"""aqueue's benchmark suite: ``python -m benchmarks`` (``make bench``).

Every figure is reported next to a baseline measured in the same run on the same
server (raw redis-py doing the least the workload needs, or a theoretical bound), and
as their ratio: the machine is noisy, ratios travel between machines, absolute numbers
do not. Each workload starts from an empty embedded Valkey server and prints one JSON
line; a readable table follows at the end. See ``benchmarks/RESULTS.md``.

Modules: ``cli`` (arguments, output), ``common`` (server, results, statistics),
``tasks`` (the benchmark handlers), ``enqueue``, ``drain``, ``latency`` and ``memory``
(the workloads), ``child`` (the worker process that drain and latency runs spawn).
"""
