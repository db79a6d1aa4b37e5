"""Workflows (docs/workflows.md): what a flow costs against the same work as plain tasks.

* ``flow_enqueue``: ``enqueue_flow`` of a 10,000-step group plus one fan-in step, against
  ``enqueue_many`` of 10,000 plain tasks (target: >= 0.5x).
* ``flow_drain``: one in-process worker (concurrency 100) runs that flow to its end,
  against the same worker draining 10,000 plain no-op tasks (target: >= 0.7x).
* ``flow_handoff``: a 100-step chain on an idle worker: from one step's end to the next
  one's start, p50, against an idle plain task's enqueue-to-start p50 (target: <= 2 ms).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import anyio

import aqueue

from .common import Bench, Result, percentile

CONCURRENCY = 100
BATCH = 1000


def _mux(done: list[int], n: int, event: anyio.Event) -> aqueue.Mux:
    mux = aqueue.Mux()

    @mux.task("bench:member")
    async def member(ctx: aqueue.Context) -> None:
        done.append(1)
        if len(done) >= n:
            event.set()

    @mux.task("bench:fanin")
    async def fanin(ctx: aqueue.Context, results: list[Any]) -> int:
        event.set()
        return len(results)

    return mux


def _group(n: int) -> aqueue.Flow:
    flow = aqueue.Flow()
    members = [flow.add(aqueue.Job("bench:member", None)) for _ in range(n)]
    flow.add(aqueue.Job("bench:fanin"), after=members)
    return flow


async def flow_enqueue(b: Bench) -> Result:
    n = b.n(10_000)

    async def subject() -> float:
        flow = _group(n)
        async with aqueue.Client(b.url) as client:
            started = time.perf_counter()
            await client.enqueue_flow(flow)
            return (n + 1) / (time.perf_counter() - started)

    async def baseline() -> float:
        jobs: list[aqueue.Job[Any]] = [aqueue.Job("bench:member", None) for _ in range(n)]
        async with aqueue.Client(b.url) as client:
            started = time.perf_counter()
            for lo in range(0, n, BATCH):
                await client.enqueue_many(jobs[lo : lo + BATCH])
            return n / (time.perf_counter() - started)

    rate, base = await b.alternate(subject, baseline)
    return Result("flow_enqueue", n, "steps/s", rate, base, "enqueue_many of plain tasks", "higher")


async def flow_drain(b: Bench) -> Result:
    n = b.n(10_000)

    async def subject() -> float:
        done: list[int] = []
        event = anyio.Event()
        async with aqueue.Client(b.url) as client:
            info = await client.enqueue_flow(_group(n))
            started = time.perf_counter()
            async with aqueue.Worker(_mux(done, n + 10, event), b.url, concurrency=CONCURRENCY):
                assert await client.result(info, timeout=120) == n
            return (n + 1) / (time.perf_counter() - started)

    async def baseline() -> float:
        done: list[int] = []
        event = anyio.Event()
        async with aqueue.Client(b.url) as client:
            jobs: list[aqueue.Job[Any]] = [aqueue.Job("bench:member", None) for _ in range(n)]
            for lo in range(0, n, BATCH):
                await client.enqueue_many(jobs[lo : lo + BATCH])
        started = time.perf_counter()
        async with aqueue.Worker(_mux(done, n, event), b.url, concurrency=CONCURRENCY):
            with anyio.fail_after(120):
                await event.wait()
        return n / (time.perf_counter() - started)

    rate, base = await b.alternate(subject, baseline)
    return Result(
        "flow_drain", n, "steps/s", rate, base, "the same worker draining plain tasks", "higher"
    )


async def flow_handoff(b: Bench) -> Result:
    steps = max(20, b.n(100))
    handoffs: list[float] = []
    idle: list[float] = []
    await b.flush()
    marks: list[tuple[float, float]] = []
    mux = aqueue.Mux()

    @mux.task("bench:step")
    async def step(ctx: aqueue.Context, n: int) -> int:
        marks.append((time.perf_counter(), 0.0))
        return n + 1

    @mux.task("bench:idle")
    async def idle_task(ctx: aqueue.Context, t: float) -> None:
        idle.append(time.perf_counter() - t)

    for _ in range(b.repeat):
        marks.clear()
        flow = aqueue.chain(aqueue.Job(step, 0), *[aqueue.Job(step) for _ in range(steps - 1)])
        async with (
            aqueue.Client(b.url) as client,
            aqueue.Worker(mux, b.url, concurrency=10),
        ):
            await client.enqueue(idle_task, time.perf_counter())  # warm up
            await anyio.sleep(0.3)
            info = await client.enqueue_flow(flow)
            assert await client.result(info, timeout=60) == steps
            starts = [m[0] for m in marks]
            handoffs += [later - earlier for earlier, later in itertools.pairwise(starts)]
            for _ in range(50):
                await client.enqueue(idle_task, time.perf_counter())
                await anyio.sleep(0.01)
    p50 = percentile(handoffs, 50) * 1000
    base = percentile(idle[1:], 50) * 1000
    return Result(
        "flow_handoff",
        steps,
        "ms p50",
        p50,
        base,
        "an idle plain task's enqueue-to-start p50",
        "lower",
        extra={"handoff_p99_ms": percentile(handoffs, 99) * 1000},
    )
