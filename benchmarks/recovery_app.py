"""The app of the crash-recovery workload: ``aqueue worker benchmarks.recovery_app:worker``.

A ``Worker`` object, because the workload needs a short ``lease_ttl`` (the CLI has no flag
for it; the URL comes from ``--url``). Tasks take 0.2 s, so a worker killed with
SIGKILL always dies holding as many of them as it has slots.
"""

from __future__ import annotations

import anyio

import aqueue

LEASE_TTL = 2.0
CONCURRENCY = 20
TASK_SECONDS = 0.2

mux = aqueue.Mux()


@mux.task("bench:slow")
async def slow(ctx: aqueue.Context) -> None:
    await anyio.sleep(TASK_SECONDS)


worker = aqueue.Worker(mux, concurrency=CONCURRENCY, lease_ttl=LEASE_TTL)
