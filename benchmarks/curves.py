"""Cost curves: what a worker costs as one dimension of the work grows.

``scale_backlog``: the drain of 50,000 no-op tasks off a backlog of 50k, 100k and 1M
pending tasks, and the server's memory per pending task. ``scale_delayed``: the same
drain beside 1k, 100k and 1M tasks delayed by an hour, and how late tasks delayed by
1 s start. ``scale_keys``: the drain of 20,000 tasks spread over 1 to 10,000 limit keys.
``scale_workers``: the server's idle commands per second per worker, 1 to 200 idle
workers (20 per process).

``scale_queues``: one worker process (concurrency 100) serving 1, 10, 100 and 1,000
queues. At each point: the drain rate of a backlog of no-op tasks spread evenly over
the queues, the commands per second an idle worker sends the server (the server's own
command count over a few idle seconds), and the enqueue-to-start latency of tasks
enqueued one by one into random queues of an idle worker. The figure is the drain rate
at the largest point against the smallest (target >= 0.7x); every point is in the
result's ``extra`` and, when matplotlib is installed, plotted to
``benchmarks/img/scale_queues.png``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import random
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

import aqueue

from .common import Bench, Result, percentile
from .curves_child import Stamp, queue_names

POINTS = (1, 10, 100, 1000)
DRAIN = 20_000
# The backlog and delayed curves drain more: a 20,000-task drain lasts half a second,
# too short to tell a large backlog's cost from the machine's noise.
LONG_DRAIN = 50_000
# Seconds after a bulk load before the worker starts: the server rehashes its large
# hashes incrementally after one, which is the load's cost, not the drain's.
SETTLE = 2.0
LATENCY = 200
IDLE_SECONDS = 5.0
IMG = Path(__file__).parent / "img"
# Below this --scale a run is a smoke run: no plot (its figures would replace the real ones).
PLOT_FROM_SCALE = 0.1


async def _commands(r: aioredis.Redis) -> int:
    stats = await r.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


def _idle_seconds(b: Bench) -> float:
    return IDLE_SECONDS if b.scale >= 0.1 else 2.0


def _latency_count(b: Bench) -> int:
    return LATENCY if b.scale >= 0.1 else 20


class _Child:
    """A ``curves_child`` worker process and its output lines."""

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        assert proc.stdout is not None
        self._out = BufferedByteReceiveStream(proc.stdout)

    async def line(self, timeout: float = 600) -> str:
        with anyio.fail_after(timeout):
            return (await self._out.receive_until(b"\n", 1 << 24)).decode()

    async def drained(self) -> float:
        seconds = float(json.loads(await self.line())["drain_s"])
        assert (await self.line()).strip() == "idle"
        return seconds

    async def latencies(self) -> list[float]:
        return list(json.loads(await self.line(120))["latencies_ms"])


@contextlib.asynccontextmanager
async def _child(
    b: Bench, queues: int, drain: int, latency: int, max_archived: int = 10_000
) -> AsyncIterator[_Child]:
    command = [sys.executable, "-m", "benchmarks.curves_child", b.url, str(queues),
               str(drain), str(latency), "--max-archived", str(max_archived)]  # fmt: skip
    proc = await anyio.open_process(command, stderr=None)
    try:
        yield _Child(proc)
    finally:
        proc.terminate()
        with anyio.move_on_after(30):
            await proc.wait()


async def _enqueue(client: aqueue.Client, jobs: list[aqueue.Job[Any]]) -> None:
    for lo in range(0, len(jobs), 1000):
        await client.enqueue_many(jobs[lo : lo + 1000])


async def _point(b: Bench, queues: int, drain: int, idle_s: float) -> dict[str, float]:
    names = queue_names(queues)
    await b.flush()
    async with aqueue.Client(b.url) as client, b.redis() as r:
        await _enqueue(client, [aqueue.Job("curve:noop", queue=names[i % queues])
                                for i in range(drain)])  # fmt: skip
        count = _latency_count(b)
        async with _child(b, queues, drain, count) as child:
            drained = await child.drained()
            await anyio.sleep(1.0)  # past the drain's last acks
            before = await _commands(r)
            await anyio.sleep(idle_s)
            idle = (await _commands(r) - before - 1) / idle_s  # less our INFO
            for _ in range(count):
                await client.enqueue(
                    "curve:stamp", Stamp(t=time.time()), queue=random.choice(names)
                )
                await anyio.sleep(0.01)
            ms = await child.latencies()
    return {
        "drain_jobs_s": drain / drained,
        "idle_commands_s": idle,
        "idle_p50_ms": percentile(ms, 50),
        "idle_p99_ms": percentile(ms, 99),
    }


async def _used_memory(r: aioredis.Redis) -> int:
    return int((await r.info("memory"))["used_memory"])


async def _backlog_point(b: Bench, backlog: int, drain: int) -> dict[str, float]:
    """Drain ``drain`` no-op tasks off a backlog of ``backlog``; server bytes per task."""
    await b.flush()
    async with aqueue.Client(b.url) as client, b.redis() as r:
        empty = await _used_memory(r)
        await _enqueue(client, [aqueue.Job("curve:noop", queue="c0") for _ in range(backlog)])
        per_task = (await _used_memory(r) - empty) / backlog
        await anyio.sleep(SETTLE if b.scale >= 0.1 else 0.0)
        async with _child(b, 1, drain, 1) as child:
            drained = await child.drained()
    return {"drain_jobs_s": drain / drained, "bytes_per_task": per_task}


async def _delayed_point(b: Bench, delayed: int, drain: int, late: int) -> dict[str, float]:
    """Drain ``drain`` no-op tasks beside ``delayed`` tasks due in an hour; then how
    late tasks delayed by 1 s start."""
    await b.flush()
    async with aqueue.Client(b.url) as client:
        await _enqueue(client, [aqueue.Job("curve:noop", queue="c0", process_in=3600)
                                for _ in range(delayed)])  # fmt: skip
        await _enqueue(client, [aqueue.Job("curve:noop", queue="c0") for _ in range(drain)])
        await anyio.sleep(SETTLE if b.scale >= 0.1 else 0.0)
        async with _child(b, 1, drain, late) as child:
            drained = await child.drained()
            for _ in range(late):
                # The stamp is the due time: the child measures how late it started.
                due = time.time() + 1.0
                await client.enqueue("curve:stamp", Stamp(t=due), queue="c0", process_in=1.0)
                await anyio.sleep(0.05)
            ms = await child.latencies()
    return {
        "drain_jobs_s": drain / drained,
        "late_p50_ms": percentile(ms, 50),
        "late_p99_ms": percentile(ms, 99),
    }


def _plot(
    b: Bench,
    name: str,
    xlabel: str,
    points: dict[int, dict[str, float]],
    panels: list[tuple[str, list[str]]],
) -> None:
    """One PNG per curve (a panel per figure), when matplotlib is installed; none for a
    smoke run."""
    if b.scale < PLOT_FROM_SCALE:
        return
    try:
        # Optional: not a dependency of the package nor of its tests.
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        print(f"{name}: no plot (pip install matplotlib)", file=sys.stderr)
        return
    xs = sorted(points)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels, strict=True):
        for key in keys:
            ax.plot(xs, [points[x][key] for x in xs], marker="o", label=key)
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        if len(keys) > 1:
            ax.legend()
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    IMG.mkdir(exist_ok=True)
    fig.savefig(IMG / f"{name}.png", dpi=90)
    plt.close(fig)


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: sorted(run[k] for run in runs)[len(runs) // 2] for k in runs[0]}


def _curve_result(
    name: str, unit: str, points: dict[int, dict[str, float]], key: str, baseline_name: str
) -> Result:
    xs = sorted(points)
    extra: dict[str, Any] = {f"x{x}_{k}": v for x, row in points.items() for k, v in row.items()}
    return Result(
        name, xs[-1], unit, points[xs[-1]][key], points[xs[0]][key], baseline_name, "higher",
        extra=extra,
    )  # fmt: skip


async def scale_queues(b: Bench) -> Result:
    drain = b.n(DRAIN, minimum=1000)
    points: dict[int, dict[str, float]] = {}
    # A smoke run (--scale below 0.1) takes two points only.
    chosen = POINTS if b.scale >= 0.1 else POINTS[:2]
    for queues in chosen:
        runs = [await _point(b, queues, drain, _idle_seconds(b)) for _ in range(b.repeat)]
        points[queues] = _medians(runs)
        print(f"  {queues} queue(s): {json.dumps(points[queues])}", file=sys.stderr, flush=True)
    _plot(b, "scale_queues", "queues served", points, [
        ("drain (jobs/s)", ["drain_jobs_s"]),
        ("idle commands/s", ["idle_commands_s"]),
        ("idle latency (ms)", ["idle_p50_ms", "idle_p99_ms"]),
    ])  # fmt: skip
    return _curve_result(
        "scale_queues", "jobs/s", points, "drain_jobs_s", "the same drain from 1 queue"
    )


BACKLOGS = (50_000, 100_000, 1_000_000)
DELAYED = (1_000, 100_000, 1_000_000)


async def scale_backlog(b: Bench) -> Result:
    """Drain rate of 50,000 no-op tasks off a backlog of 50k to 1M (target at 1M: >= 0.8x
    the smallest), and the server's bytes per pending task."""
    drain = b.n(LONG_DRAIN, minimum=1000)
    chosen = sorted({max(drain, round(x * b.scale)) for x in BACKLOGS})
    points: dict[int, dict[str, float]] = {}
    for backlog in chosen:
        runs = [await _backlog_point(b, backlog, drain) for _ in range(b.repeat)]
        points[backlog] = _medians(runs)
        print(f"  backlog {backlog}: {json.dumps(points[backlog])}", file=sys.stderr, flush=True)
    _plot(b, "scale_backlog", "pending tasks", points, [
        ("drain (jobs/s)", ["drain_jobs_s"]), ("server bytes per task", ["bytes_per_task"]),
    ])  # fmt: skip
    return _curve_result(
        "scale_backlog", "jobs/s", points, "drain_jobs_s",
        f"the same drain off a backlog of {chosen[0]:,}",
    )  # fmt: skip


async def scale_delayed(b: Bench) -> Result:
    """Drain rate beside 1k to 1M delayed tasks, and how late a task delayed by 1 s
    starts."""
    drain = b.n(LONG_DRAIN, minimum=1000)
    late = 20 if b.scale >= 0.1 else 5
    chosen = sorted({max(100, round(x * b.scale)) for x in DELAYED})
    points: dict[int, dict[str, float]] = {}
    for delayed in chosen:
        runs = [await _delayed_point(b, delayed, drain, late) for _ in range(b.repeat)]
        points[delayed] = _medians(runs)
        print(f"  delayed {delayed}: {json.dumps(points[delayed])}", file=sys.stderr, flush=True)
    _plot(b, "scale_delayed", "delayed tasks", points, [
        ("drain (jobs/s)", ["drain_jobs_s"]),
        ("a 1 s delay: start late by (ms)", ["late_p50_ms", "late_p99_ms"]),
    ])  # fmt: skip
    return _curve_result(
        "scale_delayed", "jobs/s", points, "drain_jobs_s",
        f"the same drain beside {chosen[0]:,} delayed tasks",
    )  # fmt: skip


ARCHIVED = (1_000, 100_000, 1_000_000)


async def _archive_point(b: Bench, archived: int, drain: int) -> dict[str, float]:
    """Drain ``drain`` no-op tasks from a queue that holds ``archived`` archived tasks:
    with the archive kept (``max_archived`` above it), and with the default cap, where
    the janitor trims the excess meanwhile."""
    kept = await _archive_drain(b, archived, drain, max_archived=2 * archived)
    trimmed = await _archive_drain(b, archived, drain, max_archived=10_000)
    return {
        "kept_drain_jobs_s": kept["drain_jobs_s"],
        "trimmed_drain_jobs_s": trimmed["drain_jobs_s"],
        "archived_after_trimmed_drain": trimmed["archived_after"],
    }


async def _archive_drain(
    b: Bench, archived: int, drain: int, max_archived: int
) -> dict[str, float]:
    await b.flush()
    async with aqueue.Client(b.url) as client, aqueue.Inspector(b.url) as inspector:
        await _enqueue(client, [aqueue.Job("curve:noop", queue="c0") for _ in range(archived)])
        moved = await inspector.archive_all("c0", "pending")
        await _enqueue(client, [aqueue.Job("curve:noop", queue="c0") for _ in range(drain)])
        await anyio.sleep(SETTLE if b.scale >= 0.1 else 0.0)
        assert moved == archived, (moved, archived)
        async with _child(b, 1, drain, 1, max_archived=max_archived) as child:
            drained = await child.drained()
        left = (await inspector.queue_info("c0")).archived
    return {"drain_jobs_s": drain / drained, "archived_after": left}


async def scale_archive(b: Bench) -> Result:
    """Drain rate of 50,000 no-op tasks from a queue beside 1k to 1M archived tasks,
    kept (the archive's own cost) and over the default cap of 10,000 (the janitor's
    trimming of the excess, paid once, during the drain)."""
    drain = b.n(LONG_DRAIN, minimum=1000)
    chosen = sorted({max(100, round(x * b.scale)) for x in ARCHIVED})
    points: dict[int, dict[str, float]] = {}
    for archived in chosen:
        runs = [await _archive_point(b, archived, drain) for _ in range(b.repeat)]
        points[archived] = _medians(runs)
        print(f"  archived {archived}: {json.dumps(points[archived])}", file=sys.stderr, flush=True)
    _plot(b, "scale_archive", "archived tasks", points, [
        ("drain (jobs/s)", ["kept_drain_jobs_s", "trimmed_drain_jobs_s"]),
    ])  # fmt: skip
    return _curve_result(
        "scale_archive", "jobs/s", points, "kept_drain_jobs_s",
        f"the same drain beside {chosen[0]:,} archived tasks",
    )  # fmt: skip


KEYS = (1, 100, 1_000, 10_000)


async def scale_keys(b: Bench) -> Result:
    """Drain rate of 20,000 tasks spread over 1 to 10,000 limit keys (per-key fairness:
    each key is a lane served in turn), one in-process worker as in ``flow_keys_1000``."""
    from . import flow  # the flow-control workloads' drain and mux

    n = b.n(DRAIN, minimum=1000)
    chosen = sorted({min(k, n) for k in KEYS})
    points: dict[int, dict[str, float]] = {}
    for k in chosen:
        runs = []

        def job(i: int, k: int = k) -> aqueue.Job[Any]:
            return aqueue.Job("bench:flow", limit_key=f"k{i % k}")

        for _ in range(b.repeat):
            runs.append({"drain_jobs_s": await flow._drain(b, n, flow._new(n), job)})
        points[k] = _medians(runs)
        print(f"  {k} key(s): {json.dumps(points[k])}", file=sys.stderr, flush=True)
    _plot(b, "scale_keys", "limit keys", points, [("drain (jobs/s)", ["drain_jobs_s"])])
    return _curve_result(
        "scale_keys", "jobs/s", points, "drain_jobs_s", "the same drain under one limit key"
    )


WORKERS = (1, 10, 50, 200)
# Idle workers per process of the scale_workers curve.
PER_PROCESS = 20


async def _idle_workers_point(b: Bench, workers: int, seconds: float) -> dict[str, float]:
    """The server's commands per second while ``workers`` idle workers (over several
    processes) serve one queue."""
    await b.flush()
    counts = [PER_PROCESS] * (workers // PER_PROCESS)
    if workers % PER_PROCESS:
        counts.append(workers % PER_PROCESS)
    procs = []
    try:
        for count in counts:
            command = [sys.executable, "-m", "benchmarks.curves_idle", b.url, str(count)]
            procs.append(await anyio.open_process(command, stderr=None))
        for proc in procs:
            assert proc.stdout is not None
            out = BufferedByteReceiveStream(proc.stdout)
            with anyio.fail_after(120):
                assert (await out.receive_until(b"\n", 1024)).strip() == b"ready"
        async with b.redis() as r:
            await anyio.sleep(3.0)  # past the start: first passes, declarations
            before = await _commands(r)
            await anyio.sleep(seconds)
            total = (await _commands(r) - before - 1) / seconds
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            with anyio.move_on_after(30):
                await proc.wait()
    return {"commands_s": total, "commands_s_per_worker": total / workers}


async def scale_workers(b: Bench) -> Result:
    """Idle server load against the number of idle workers on one server (1 to 200,
    20 per process): commands per second per worker should stay constant."""
    chosen = WORKERS if b.scale >= 0.1 else WORKERS[:2]
    seconds = _idle_seconds(b)
    points: dict[int, dict[str, float]] = {}
    for workers in chosen:
        runs = [await _idle_workers_point(b, workers, seconds) for _ in range(b.repeat)]
        points[workers] = _medians(runs)
        print(f"  {workers} worker(s): {json.dumps(points[workers])}", file=sys.stderr, flush=True)
    _plot(b, "scale_workers", "idle workers", points, [
        ("idle commands/s", ["commands_s"]), ("per worker", ["commands_s_per_worker"]),
    ])  # fmt: skip
    xs = sorted(points)
    extra: dict[str, Any] = {f"x{x}_{k}": v for x, row in points.items() for k, v in row.items()}
    return Result(
        "scale_workers", xs[-1], "commands/s per worker",
        points[xs[-1]]["commands_s_per_worker"], points[xs[0]]["commands_s_per_worker"],
        "one idle worker alone", "lower", extra=extra,
    )  # fmt: skip
