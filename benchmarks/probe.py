"""``python benchmarks/probe.py [--scale 1.0]``: enqueue through the public API only, one
await at a time and gathers of 1000, each against raw redis-py LPUSHes issued the same
way; one JSON line per workload, as ``python -m benchmarks --json`` prints them.

It imports nothing of aqueue but ``aqueue.Client`` and ``aqueue.server``, so
``python -m benchmarks.compare REV --probe`` can run this same file against the aqueue
of any revision, old module layout or new: a same-run before/after of the producer's
URL path when the benchmark suite itself has changed in between.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

import aqueue
from aqueue.server import EmbeddedServer

BATCH = 1000
ROUNDS = 3
Run = Callable[[int], Awaitable[None]]


async def rate(n: int, run: Run) -> float:
    start = time.perf_counter()
    await run(n)
    return n / (time.perf_counter() - start)


async def measure(name: str, n: int, subject: Run, baseline: Run, flush: Run) -> None:
    subjects, baselines = [], []
    for _ in range(ROUNDS):
        await flush(0)
        baselines.append(await rate(n, baseline))
        await flush(0)
        subjects.append(await rate(n, subject))
    value, base = statistics.median(subjects), statistics.median(baselines)
    line = {
        "workload": name, "n": n, "unit": "tasks/s", "value": round(value),
        "baseline": round(base), "ratio": round(value / base, 3), "better": "higher",
    }  # fmt: skip
    print(json.dumps(line), flush=True)


async def main(url: str, scale: float) -> None:
    async with aqueue.Client(url) as client:
        # A blocking pool of 100, the size of the Client's own: calls past it wait.
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=100)
        r = aioredis.Redis.from_pool(pool)

        async def flush(_: int) -> None:
            await r.flushdb()

        async def serial(n: int) -> None:
            for i in range(n):
                await client.enqueue("probe", {"n": i})

        async def raw_serial(n: int) -> None:
            for i in range(n):
                await r.lpush("raw", json.dumps({"n": i}))

        async def gather(n: int) -> None:
            for lo in range(0, n, BATCH):
                await asyncio.gather(
                    *(client.enqueue("probe", {"n": i}) for i in range(lo, lo + BATCH))
                )

        async def raw_gather(n: int) -> None:
            for lo in range(0, n, BATCH):
                await asyncio.gather(
                    *(r.lpush("raw", json.dumps({"n": i})) for i in range(lo, lo + BATCH))
                )

        # Warm both: connections open and scripts loaded, as in a long-lived producer.
        await gather(BATCH)
        await raw_gather(BATCH)
        await measure(
            "probe_enqueue_serial", max(100, int(5000 * scale)), serial, raw_serial, flush
        )
        n = max(BATCH, int(10_000 * scale) // BATCH * BATCH)
        await measure("probe_enqueue_gather", n, gather, raw_gather, flush)
        await r.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python benchmarks/probe.py")
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    with EmbeddedServer() as server:
        asyncio.run(main(server.url, args.scale))
