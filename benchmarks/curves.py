"""Cost curves: what a worker costs as one dimension of the work grows.

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

import importlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis
from anyio.streams.buffered import BufferedByteReceiveStream

import aqueue

from .common import Bench, Result, percentile
from .curves_child import Stamp, queue_names

POINTS = (1, 10, 100, 1000)
DRAIN = 20_000
LATENCY = 200
IDLE_SECONDS = 5.0
IMG = Path(__file__).parent / "img"


async def _commands(r: aioredis.Redis) -> int:
    stats = await r.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


def _idle_seconds(b: Bench) -> float:
    return IDLE_SECONDS if b.scale >= 0.1 else 2.0


def _latency_count(b: Bench) -> int:
    return LATENCY if b.scale >= 0.1 else 20


async def _point(b: Bench, queues: int, drain: int, idle_s: float) -> dict[str, float]:
    names = queue_names(queues)
    await b.flush()
    async with aqueue.Client(b.url) as client, b.redis() as r:
        jobs: list[aqueue.Job[Any]] = [
            aqueue.Job("curve:noop", queue=names[i % queues]) for i in range(drain)
        ]
        for lo in range(0, drain, 1000):
            await client.enqueue_many(jobs[lo : lo + 1000])
        count = _latency_count(b)
        command = [sys.executable, "-m", "benchmarks.curves_child", b.url, str(queues),
                   str(drain), str(count)]  # fmt: skip
        proc = await anyio.open_process(command, stderr=None)
        try:
            assert proc.stdout is not None
            out = BufferedByteReceiveStream(proc.stdout)

            async def line() -> str:
                return (await out.receive_until(b"\n", 1 << 24)).decode()

            with anyio.fail_after(600):
                drained = json.loads(await line())["drain_s"]
                assert (await line()).strip() == "idle"
            await anyio.sleep(1.0)  # past the drain's last acks
            before = await _commands(r)
            await anyio.sleep(idle_s)
            idle = (await _commands(r) - before - 1) / idle_s  # less our INFO
            for _ in range(count):
                await client.enqueue(
                    "curve:stamp", Stamp(t=time.time()), queue=random.choice(names)
                )
                await anyio.sleep(0.01)
            with anyio.fail_after(120):
                ms = json.loads(await line())["latencies_ms"]
        finally:
            proc.terminate()
            with anyio.move_on_after(30):
                await proc.wait()
    return {
        "drain_jobs_s": drain / drained,
        "idle_commands_s": idle,
        "idle_p50_ms": percentile(ms, 50),
        "idle_p99_ms": percentile(ms, 99),
    }


def _plot(name: str, xlabel: str, points: dict[int, dict[str, float]]) -> None:
    """One PNG per curve (three panels), when matplotlib is installed."""
    try:
        # Optional: not a dependency of the package nor of its tests.
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        print(f"{name}: no plot (pip install matplotlib)", file=sys.stderr)
        return
    xs = sorted(points)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    panels = [
        ("drain (jobs/s)", ["drain_jobs_s"]),
        ("idle commands/s", ["idle_commands_s"]),
        ("idle latency (ms)", ["idle_p50_ms", "idle_p99_ms"]),
    ]
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            ax.plot(xs, [points[x][key] for x in xs], marker="o", label=key)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        if len(keys) > 1:
            ax.legend()
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    IMG.mkdir(exist_ok=True)
    fig.savefig(IMG / f"{name}.png", dpi=90)
    plt.close(fig)


async def scale_queues(b: Bench) -> Result:
    drain = b.n(DRAIN, minimum=1000)
    points: dict[int, dict[str, float]] = {}
    # A smoke run (--scale below 0.1) takes two points only.
    chosen = POINTS if b.scale >= 0.1 else POINTS[:2]
    for queues in chosen:
        runs = [await _point(b, queues, drain, _idle_seconds(b)) for _ in range(b.repeat)]
        points[queues] = {k: sorted(run[k] for run in runs)[len(runs) // 2] for k in runs[0]}
        print(f"  {queues} queue(s): {json.dumps(points[queues])}", file=sys.stderr, flush=True)
    _plot("scale_queues", "queues served", points)
    lo, hi = points[chosen[0]], points[chosen[-1]]
    extra: dict[str, Any] = {f"q{q}_{k}": v for q, row in points.items() for k, v in row.items()}
    return Result(
        "scale_queues", chosen[-1], "jobs/s", hi["drain_jobs_s"], lo["drain_jobs_s"],
        "the same drain from 1 queue", "higher", extra=extra,
    )  # fmt: skip
