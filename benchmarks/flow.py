"""Flow control (docs/flow-control.md): what limits, keys and priorities cost, and whether
the limiters hold their numbers.

Each drain runs one in-process Worker (concurrency 100) over a backlog written before it
starts, against the same backlog without the feature, alternated in the same run:

* ``flow_limits_idle``: a task type with a rate and a concurrency limit it never reaches,
  against the same tasks of a type without limits (target: >= 0.8x).
* ``flow_keys_1000``: a backlog spread over 1,000 limit keys, served in turn, against the
  same backlog under one key (target: >= 0.5x).
* ``flow_rate_200``: ``rate_limit="200/s"`` over a backlog: starts per second over the run,
  against 200 (target: within 5%).
* ``flow_concurrency``: ``concurrency_limit=20`` with 2 ms tasks: the mean number running,
  against 20 (target: >= 90%).
* ``flow_latency``: enqueue-to-start p50 of a limited task whose slot is free, against an
  unlimited task, both at 100 tasks/s to an idle worker (target: <= 2 ms).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio

import aqueue

from .common import Bench, Result, percentile

CONCURRENCY = 100
BATCH = 1000


class _Counter:
    """Counts handler runs; ``done`` is set once ``n`` ran."""

    def __init__(self, n: int) -> None:
        self.n, self.count = n, 0
        self.done = anyio.Event()
        self.starts: list[float] = []
        self.busy = 0.0

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.n:
            self.done.set()


def _mux(counter: _Counter, **limits: Any) -> aqueue.Mux:
    mux = aqueue.Mux()

    @mux.task("bench:flow", **limits)
    async def flow(ctx: aqueue.Context) -> None:
        counter.hit()

    return mux


async def _drain(
    b: Bench, n: int, mux: aqueue.Mux, jobs: Callable[[int], aqueue.Job[Any]]
) -> float:
    """Enqueue ``n`` jobs, then time one worker draining them: tasks per second."""
    await b.flush()
    await _declare(b, mux)
    async with aqueue.Client(b.url) as client:
        for lo in range(0, n, BATCH):
            await client.enqueue_many([jobs(i) for i in range(lo, min(n, lo + BATCH))])
    counter = _counter_of(mux)
    started = time.perf_counter()
    async with aqueue.Worker(mux, b.url, concurrency=CONCURRENCY, scheduler=False):
        with anyio.fail_after(60 + n / 500):
            await counter.done.wait()
    return n / (time.perf_counter() - started)


async def _declare(b: Bench, mux: aqueue.Mux) -> None:
    """Start and stop a worker: its limits are declared, as they are wherever workers
    run (a backlog enqueued before any declaration is limited too, at a small cost)."""
    async with aqueue.Worker(mux, b.url, scheduler=False):
        pass


_COUNTERS: dict[int, _Counter] = {}


def _counter_of(mux: aqueue.Mux) -> _Counter:
    return _COUNTERS[id(mux)]


def _new(n: int, **limits: Any) -> aqueue.Mux:
    counter = _Counter(n)
    mux = _mux(counter, **limits)
    _COUNTERS[id(mux)] = counter
    return mux


async def flow_limits_idle(b: Bench) -> Result:
    n = b.n(20_000)
    never = {"rate_limit": aqueue.Rate(10_000_000), "concurrency_limit": 1_000_000}

    async def subject() -> float:
        return await _drain(b, n, _new(n, **never), lambda i: aqueue.Job("bench:flow"))

    async def baseline() -> float:
        return await _drain(b, n, _new(n), lambda i: aqueue.Job("bench:flow"))

    rate, base = await b.alternate(subject, baseline)
    return Result(
        "flow_limits_idle", n, "jobs/s", rate, base, "the same tasks without limits", "higher"
    )


async def flow_keys_1000(b: Bench) -> Result:
    n = b.n(20_000)

    async def subject() -> float:
        return await _drain(
            b, n, _new(n), lambda i: aqueue.Job("bench:flow", limit_key=f"k{i % 1000}")
        )

    async def baseline() -> float:
        return await _drain(b, n, _new(n), lambda i: aqueue.Job("bench:flow", limit_key="k"))

    rate, base = await b.alternate(subject, baseline)
    return Result(
        "flow_keys_1000", n, "jobs/s", rate, base, "the same backlog under one key", "higher"
    )


async def flow_rate_200(b: Bench) -> Result:
    seconds = max(2.0, 10.0 * min(b.scale, 1.0))
    n = int(200 * seconds) + 200  # a backlog the limiter never runs out of
    await b.flush()
    starts: list[float] = []
    mux = aqueue.Mux()

    @mux.task("bench:rated", rate_limit="200/s")
    async def rated(ctx: aqueue.Context) -> None:
        starts.append(time.monotonic())

    await _declare(b, mux)
    async with aqueue.Client(b.url) as client:
        for lo in range(0, n, BATCH):
            await client.enqueue_many([aqueue.Job(rated) for _ in range(min(BATCH, n - lo))])
    async with aqueue.Worker(mux, b.url, concurrency=CONCURRENCY, scheduler=False):
        await anyio.sleep(seconds + 1.5)
    # The window measured starts after the first burst (the limiter's first window may
    # take a full second's worth at once) and lasts `seconds`.
    t0 = starts[0] + 1.0
    inside = [t for t in starts if t0 <= t < t0 + seconds]
    rate = len(inside) / seconds
    return Result(
        "flow_rate_200",
        len(inside),
        "starts/s",
        rate,
        200.0,
        "the limit, 200/s",
        "higher",
        extra={"seconds": seconds},
    )


async def flow_concurrency(b: Bench) -> Result:
    limit, hold = 20, 0.002
    n = b.n(5_000, minimum=200)
    await b.flush()
    running = 0
    samples: list[int] = []
    done = anyio.Event()
    count = 0
    mux = aqueue.Mux()

    @mux.task("bench:capped", concurrency_limit=limit)
    async def capped(ctx: aqueue.Context) -> None:
        nonlocal running, count
        running += 1
        try:
            await anyio.sleep(hold)
        finally:
            running -= 1
            count += 1
            if count >= n:
                done.set()

    await _declare(b, mux)
    async with aqueue.Client(b.url) as client:
        for lo in range(0, n, BATCH):
            await client.enqueue_many([aqueue.Job(capped) for _ in range(min(BATCH, n - lo))])

    held: list[int] = []  # the limit's slots taken, as the server counts them

    async def sample() -> None:
        async with b.redis() as r:
            while not done.is_set():
                samples.append(running)
                held.append(int(await r.hget(RUNNING, SLOT) or 0))
                await anyio.sleep(0.001)

    started = time.perf_counter()
    async with (
        aqueue.Worker(mux, b.url, concurrency=CONCURRENCY, scheduler=False),
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(sample)
        with anyio.fail_after(120):
            await done.wait()
    wall = time.perf_counter() - started
    # Sampled while the backlog lasted, past the worker's start-up.
    mean_held, mean_running = _steady_mean(held), _steady_mean(samples)
    return Result(
        "flow_concurrency",
        n,
        "slots",
        mean_held,
        float(limit),
        f"the limit, {limit} at once ({hold * 1000:g} ms tasks)",
        "higher",
        extra={
            "handlers_running": mean_running,
            "peak": float(max(samples)),
            "ideal_seconds": n * hold / limit,
            "seconds": wall,
        },
    )


# The running count of a task type's limit (lib/flow.lua's names).
RUNNING = "aq:{default}:running"
SLOT = "t\x02bench:capped\x02"


def _steady_mean(samples: list[int]) -> float:
    """The mean past the first and before the last tenth (start-up and the tail)."""
    steady = samples[len(samples) // 10 : -max(1, len(samples) // 10)] or samples
    return sum(steady) / len(steady)


async def _latencies(b: Bench, n: int, limited: bool) -> list[float]:
    await b.flush()
    latencies: list[float] = []
    all_in = anyio.Event()
    mux = aqueue.Mux()
    limits: dict[str, Any] = {"concurrency_limit": 10} if limited else {}

    @mux.task("bench:stamp", **limits)
    async def stamp(ctx: aqueue.Context, t: float) -> None:
        latencies.append(time.time() - t)
        if len(latencies) > n:
            all_in.set()

    async with (
        aqueue.Worker(mux, b.url, concurrency=CONCURRENCY, scheduler=False),
        aqueue.Client(b.url) as client,
    ):
        await client.enqueue(stamp, time.time())  # connect, load the scripts
        await anyio.sleep(0.5)
        start = time.monotonic()
        for i in range(n):
            delay = start + i / 100 - time.monotonic()
            if delay > 0:
                await anyio.sleep(delay)
            await client.enqueue(stamp, time.time())
        with anyio.fail_after(10):
            await all_in.wait()
    return latencies[1:]


async def flow_latency(b: Bench) -> Result:
    n = b.n(300, minimum=50)
    limited_p50: list[float] = []
    plain_p50: list[float] = []
    limited_p99: list[float] = []

    async def subject() -> float:
        got = await _latencies(b, n, limited=True)
        limited_p50.append(percentile(got, 50))
        limited_p99.append(percentile(got, 99))
        return limited_p50[-1] * 1000

    async def baseline() -> float:
        got = await _latencies(b, n, limited=False)
        plain_p50.append(percentile(got, 50))
        return plain_p50[-1] * 1000

    p50, base = await b.alternate(subject, baseline)
    return Result(
        "flow_latency",
        n,
        "ms p50",
        p50,
        base,
        "an unlimited task, p50",
        "lower",
        extra={"limited_p99_ms": sorted(limited_p99)[len(limited_p99) // 2] * 1000},
    )
