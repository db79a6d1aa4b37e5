"""Crash recovery: how long after a worker is SIGKILLed its tasks run again.

A worker process (``benchmarks.recovery_app``, ``lease_ttl`` 2 s, 20 slots, 0.2 s tasks)
works through a backlog; once it holds a full set of tasks it is killed with SIGKILL and a
second worker is started at once. The figure is the time from the kill until the dead
worker's lease is reaped, i.e. every task it held is back in its queue (and, a moment
later, running on the second worker). The baseline is ``lease_ttl``: a reaper must not
return tasks of a lease that may still be alive. The second worker starts on the same
host, where it can prove the first dead (its pid is gone: ``aqueue/_worker/successor.py``)
and ends its lease at once, so the figure is well under the baseline; a worker that
vanished with its host is found by the reapers after ``lease_ttl``.
The extra figures are the time until the whole backlog is done, and the check that each
task completed exactly once after the kill.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import anyio
import redis.asyncio as aioredis
from anyio.abc import Process

import aqueue
from aqueue._redis.broker import DEFAULT_PREFIX
from aqueue._redis.keys import queue_keys

from .common import ROOT, Bench, Result
from .recovery_app import CONCURRENCY, LEASE_TTL, slow

APP = "benchmarks.recovery_app:worker"


async def _start(url: str) -> Process:
    argv = [sys.executable, "-m", "aqueue._cli", "worker", APP, "--url", url,
            "--log-level", "ERROR"]  # fmt: skip
    return await anyio.open_process(argv, cwd=ROOT)


async def _succeeded(r: aioredis.Redis, stats: str) -> int:
    """Completed tasks: "p" counts every processed attempt, "f" the failed ones (the
    reaper counts an attempt for each task the dead worker held)."""
    counts = await r.hmget(stats, ["p", "f"])
    return int(counts[0] or 0) - int(counts[1] or 0)


async def _active(r: aioredis.Redis, states: str) -> int:
    return sum(1 for v in await r.hvals(states) if str(text(v)).startswith("@"))


def text(value: Any) -> str | None:
    """redis-py types replies loosely: bytes here (no decode_responses)."""
    return value.decode() if isinstance(value, bytes) else value


async def _once(b: Bench, n: int) -> tuple[float, float]:
    """Seconds from the kill to the lease reaped, and to the backlog done."""
    k = queue_keys(DEFAULT_PREFIX, "default")
    async with aqueue.Client(b.url) as client:
        await client.enqueue_many([aqueue.Job(slow) for _ in range(n)])
    first = await _start(b.url)
    second: Process | None = None
    async with aioredis.Redis.from_url(b.url) as r:
        try:
            with anyio.fail_after(60):
                while await _active(r, k.states) < CONCURRENCY:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                (dead,) = [str(text(m)) for m in await r.zrange(k.leases, 0, -1)]
            first.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await first.wait()
            second = await _start(b.url)
            with anyio.fail_after(60 + n / 10):
                while await r.zscore(k.leases, dead) is not None:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                reaped = time.monotonic() - killed
                while await _succeeded(r, k.stats) < n:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                done = time.monotonic() - killed
        finally:
            for p in (first, second):
                if p is not None and p.returncode is None:
                    p.kill()
                    await p.wait()
        # Nothing lost, nothing left: every task completed and was forgotten.
        left = await r.hlen(k.tasks)
    if left:
        raise RuntimeError(f"{left} tasks are still on the server after the recovery")
    return reaped, done


async def crash_recovery(b: Bench) -> Result:
    n = max(3 * CONCURRENCY, b.n(200))
    reaped: list[float] = []
    done: list[float] = []
    for _ in range(b.repeat):
        await b.flush()
        r, d = await _once(b, n)
        reaped.append(r)
        done.append(d)
    reaped.sort()
    done.sort()
    return Result(
        "crash_recovery",
        n,
        "s",
        reaped[len(reaped) // 2],
        LEASE_TTL,
        "lease_ttl: what a reaper waits for when nobody proves the worker dead",
        "lower",
        extra={"all_done_s": done[len(done) // 2], "concurrency": CONCURRENCY},
    )
