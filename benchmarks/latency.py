"""Latency: tasks enqueued at a fixed rate to an idle worker in its own process.

Each task carries ``time.time()`` taken just before ``enqueue``; the handler records how
long after that it started. The baseline is the floor of any Redis queue: a raw LPUSH
at the same rate to one redis-py consumer blocked on BLMOVE.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

import aqueue

from .common import RAW_PENDING, ROOT, Bench, Result, child_command, percentile
from .tasks import Item, Stamp, item, raw_record, stamp

DURATION = 3.0  # seconds per rate at scale 1
MAX_LINE = 1 << 24

Producer = Callable[[Bench, int, float], Awaitable[None]]


async def _produce_aqueue(b: Bench, n: int, rate: float) -> None:
    async with aqueue.Client(b.url) as client:
        # Connect and load the script on a queue nobody serves, before the clock starts.
        await client.enqueue(item, Item(n=0), queue="warmup")
        start = time.monotonic()
        for i in range(n):
            await _until(start + i / rate)
            await client.enqueue(stamp, Stamp(t=time.time()))


async def _produce_raw(b: Bench, n: int, rate: float) -> None:
    async with b.redis() as r:
        await r.ping()
        start = time.monotonic()
        for i in range(n):
            await _until(start + i / rate)
            await r.lpush(RAW_PENDING, raw_record("bench:stamp", {"t": time.time()}))


async def _until(when: float) -> None:
    """Sleep until ``when`` (monotonic): a fixed schedule, so a slow call does not
    lower the rate, the next ones just go out at once."""
    delay = when - time.monotonic()
    if delay > 0:
        await anyio.sleep(delay)


async def _measure(b: Bench, n: int, rate: float, kind: str, produce: Producer) -> list[float]:
    """Start a consumer process, wait until it serves, produce, collect its latencies."""
    await b.flush()
    timeout = n / rate + 30
    command = child_command("latency", b.url, str(n), kind, str(timeout))
    with anyio.fail_after(timeout + 10):
        async with await anyio.open_process(command, cwd=ROOT, stderr=None) as proc:
            assert proc.stdout is not None
            out = BufferedByteReceiveStream(proc.stdout)
            try:
                ready = await out.receive_until(b"\n", MAX_LINE)
                if ready != b"ready":
                    raise RuntimeError(f"the {kind} latency consumer said {ready!r}, not ready")
                await produce(b, n, rate)
                report = json.loads(await out.receive_until(b"\n", MAX_LINE))
            except BaseException:
                proc.kill()
                raise
            if await proc.wait() != 0:
                raise RuntimeError(f"the {kind} latency consumer exited with {proc.returncode}")
    latencies: list[float] = report["latencies_ms"]
    return latencies


async def _latency(b: Bench, rate: int) -> Result:
    n = max(10, round(rate * DURATION * b.scale))
    raw = await _measure(b, n, rate, "raw", _produce_raw)
    ours = await _measure(b, n, rate, "aqueue", _produce_aqueue)
    return Result(
        f"latency_{rate}",
        n,
        "ms p50",
        percentile(ours, 50),
        percentile(raw, 50),
        "raw LPUSH to a BLMOVE consumer, p50",
        "lower",
        extra={
            "p99_ms": percentile(ours, 99),
            "baseline_p99_ms": percentile(raw, 99),
            "max_ms": max(ours),
            "rate_per_s": rate,
        },
    )


async def latency_100(b: Bench) -> Result:
    return await _latency(b, 100)


async def latency_500(b: Bench) -> Result:
    return await _latency(b, 500)
