"""Processing workloads: one Worker (concurrency 100, its own process) drains a backlog.

The backlog is written before the worker starts, so the figure is the worker's alone.
No-op tasks measure the framework's cost per task against a hand-written redis-py
consumer (``child.drain_raw``); 10 ms tasks measure how close the worker comes to its
ideal, ``concurrency / 10 ms``. The worker's peak RSS comes from the no-op runs.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

import anyio

import aqueue

from .common import RAW_PENDING, ROOT, Bench, Result, child_command
from .tasks import noop, raw_record, sleep

CONCURRENCY = 100
SLEEP_SECONDS = 0.01
BATCH = 1000


async def _enqueue(b: Bench, n: int, handler: aqueue.Handler[None, None]) -> None:
    async with aqueue.Client(b.url) as client:
        for lo in range(0, n, BATCH):
            await client.enqueue_many([aqueue.Job(handler) for _ in range(min(BATCH, n - lo))])


async def _enqueue_raw(b: Bench, n: int) -> None:
    async with b.redis() as r:
        for lo in range(0, n, BATCH):
            pipe = r.pipeline(transaction=False)
            for _ in range(min(BATCH, n - lo)):
                pipe.lpush(RAW_PENDING, raw_record("bench:noop"))
            await pipe.execute()


async def _child_drain(b: Bench, n: int, kind: str, uvloop: bool = False) -> dict[str, float]:
    """Run a worker process until it has acked ``n`` tasks; its report (see ``child``).
    A worker that gets stuck is killed after a generous limit."""
    command = child_command("drain", b.url, str(n), kind, str(CONCURRENCY))
    if uvloop:
        command.append("--uvloop")
    with anyio.fail_after(60 + n / 200):
        done = await anyio.run_process(command, cwd=ROOT, stderr=None)
    report: dict[str, float] = json.loads(done.stdout.decode().splitlines()[-1])
    return report


async def _noop_runs(b: Bench) -> dict[str, Any]:
    """Interleaved aqueue and raw drains of no-op backlogs, memoized for ``worker_rss``."""
    if "noop" in b.memo:
        runs: dict[str, Any] = b.memo["noop"]
        return runs
    n = b.n(20_000)
    reports: dict[str, list[dict[str, float]]] = {"aqueue": [], "raw": []}

    async def subject() -> float:
        await _enqueue(b, n, noop)
        reports["aqueue"].append(await _child_drain(b, n, "aqueue"))
        return n / reports["aqueue"][-1]["seconds"]

    async def baseline() -> float:
        await _enqueue_raw(b, n)
        reports["raw"].append(await _child_drain(b, n, "raw"))
        return n / reports["raw"][-1]["seconds"]

    rate, base = await b.alternate(subject, baseline)
    runs = {"n": n, "rate": rate, "baseline": base, **reports}
    b.memo["noop"] = runs
    return runs


async def drain_noop(b: Bench) -> Result:
    runs = await _noop_runs(b)
    return Result(
        "drain_noop",
        runs["n"],
        "jobs/s",
        runs["rate"],
        runs["baseline"],
        "raw redis-py LMOVE/LREM loop, batches of 100",
        "higher",
    )


async def drain_sleep(b: Bench) -> Result:
    n = b.n(10_000)
    ideal = CONCURRENCY / SLEEP_SECONDS
    rates: list[float] = []
    for _ in range(b.repeat):
        await b.flush()
        await _enqueue(b, n, sleep)
        rates.append(n / (await _child_drain(b, n, "aqueue"))["seconds"])
    return Result(
        "drain_sleep",
        n,
        "jobs/s",
        statistics.median(rates),
        ideal,
        f"ideal: concurrency {CONCURRENCY} / {SLEEP_SECONDS * 1000:g} ms",
        "higher",
    )


async def worker_rss(b: Bench) -> Result:
    """Peak RSS of the worker process over a no-op drain, against the same process
    before it started serving (interpreter, aqueue and redis-py imported)."""
    runs = await _noop_runs(b)
    peak = statistics.median(r["rss_peak_mb"] for r in runs["aqueue"])
    idle = statistics.median(r["rss_idle_mb"] for r in runs["aqueue"])
    raw_peak = statistics.median(r["rss_peak_mb"] for r in runs["raw"])
    return Result(
        "worker_rss",
        runs["n"],
        "MB",
        peak,
        idle,
        "the same process before serving",
        "lower",
        extra={"raw_loop_peak_mb": raw_peak},
    )


async def drain_uvloop(b: Bench) -> Result:
    """The no-op drain on uvloop (``aqueue-redis[fast]``, which ``aqueue worker`` uses when it
    is installed) against the default asyncio loop, interleaved in the same run."""
    n = b.n(20_000)

    async def run(uvloop: bool) -> float:
        await _enqueue(b, n, noop)
        return n / (await _child_drain(b, n, "aqueue", uvloop=uvloop))["seconds"]

    rate, base = await b.alternate(lambda: run(True), lambda: run(False))
    return Result(
        "drain_uvloop", n, "jobs/s", rate, base, "the same drain on the asyncio loop", "higher"
    )
