"""The worker side of the drain and latency workloads, run as its own process.

A worker in its own process is what production runs, keeps the producer's event loop
out of the measurement, and gives an honest peak RSS. Usage (by the benchmark only)::

    python -m benchmarks.child drain URL N {aqueue,raw} CONCURRENCY [--uvloop]
    python -m benchmarks.child latency URL N {aqueue,raw} TIMEOUT

``drain`` serves until N tasks are acked and prints one JSON line: ``seconds`` (from
starting the worker to the N-th ack), ``rss_idle_mb`` (peak RSS after imports, before
any work) and ``rss_peak_mb`` (peak RSS at the end). ``latency`` prints ``ready`` once
it serves, then, after N tasks, a JSON line with ``latencies_ms``, enqueue-to-handler
start for each task.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

import anyio
import msgspec
import redis.asyncio as aioredis

import aqueue
from aqueue._redis.broker import DEFAULT_PREFIX
from aqueue._redis.keys import queue_keys

from . import tasks
from .common import RAW_DONE, RAW_PENDING, RAW_PROCESSING
from .peers.kit import peak_rss_mb

# Tasks one raw loop iteration claims: the same as aqueue's default claim batch.
RAW_BATCH = 100


async def drain_aqueue(url: str, n: int, concurrency: int) -> float:
    """Seconds from starting a Worker to its n-th ack (the queue's processed total)."""
    worker = aqueue.Worker(tasks.mux, url, concurrency=concurrency)
    stats = queue_keys(DEFAULT_PREFIX, "default").stats
    async with aioredis.Redis.from_url(url) as r:
        await r.ping()
        start = time.perf_counter()
        async with worker:
            # Acks happen inside the worker: the server's processed count is the outcome.
            while int(await r.hget(stats, "p") or 0) < n:  # noqa: ASYNC110
                await anyio.sleep(0.005)
            return time.perf_counter() - start


async def drain_raw(url: str, n: int) -> float:
    """The least an at-least-once consumer does with redis-py: move a batch of records
    to a processing list, run their handlers concurrently, remove them, count them."""
    decoder = msgspec.msgpack.Decoder()

    async def noop() -> None:
        return None

    async def run(record: bytes) -> None:
        decoder.decode(record)
        await noop()

    async with aioredis.Redis.from_url(url) as r:
        await r.ping()
        start = time.perf_counter()
        done = 0
        while done < n:
            pipe = r.pipeline(transaction=False)
            for _ in range(RAW_BATCH):
                pipe.lmove(RAW_PENDING, RAW_PROCESSING, "RIGHT", "LEFT")
            records = [x for x in await pipe.execute() if x is not None]
            if not records:
                raise RuntimeError(f"the raw queue ran dry after {done} of {n} records")
            async with anyio.create_task_group() as tg:
                for record in records:
                    tg.start_soon(run, record)
            pipe = r.pipeline(transaction=False)
            for record in records:
                pipe.lrem(RAW_PROCESSING, 1, record)
            pipe.incrby(RAW_DONE, len(records))
            await pipe.execute()
            done += len(records)
        return time.perf_counter() - start


async def drain(url: str, n: int, kind: str, concurrency: int) -> dict[str, Any]:
    idle = peak_rss_mb()
    if kind == "raw":
        seconds = await drain_raw(url, n)
    else:
        seconds = await drain_aqueue(url, n, concurrency)
    return {"seconds": seconds, "rss_idle_mb": idle, "rss_peak_mb": peak_rss_mb()}


async def latency_aqueue(url: str, n: int, timeout: float) -> list[float]:
    done = tasks.seen.expect(n)
    async with aqueue.Worker(tasks.mux, url, concurrency=100):
        _ready()
        with anyio.fail_after(timeout):
            await done.wait()
    return tasks.seen.ms


async def latency_raw(url: str, n: int, timeout: float) -> list[float]:
    """One redis-py consumer blocked on BLMOVE: the floor of enqueue-to-start latency."""
    decoder = msgspec.msgpack.Decoder(dict[str, Any])
    out: list[float] = []
    async with aioredis.Redis.from_url(url) as r:
        await r.ping()
        _ready()
        with anyio.fail_after(timeout):
            while len(out) < n:
                record = await r.blmove(RAW_PENDING, RAW_PROCESSING, 1, "RIGHT", "LEFT")
                if not isinstance(record, bytes):
                    continue  # timed out (None); str never comes without decode_responses
                body = decoder.decode(record)
                out.append((time.time() - body["payload"]["t"]) * 1000)
                await r.lrem(RAW_PROCESSING, 1, record)  # type: ignore[arg-type]  # bytes work
    return out


def _quiet_storage_warning(record: logging.LogRecord) -> bool:
    """Drop the worker's (true) warning that the throwaway server persists nothing."""
    return not record.getMessage().startswith("the server keeps nothing on disk")


def _ready() -> None:
    print("ready", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.child")
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("drain")
    p.add_argument("url")
    p.add_argument("n", type=int)
    p.add_argument("kind", choices=["aqueue", "raw"])
    p.add_argument("concurrency", type=int)
    p.add_argument("--uvloop", action="store_true", help="run on uvloop (aqueue-redis[fast])")
    p = sub.add_parser("latency")
    p.add_argument("url")
    p.add_argument("n", type=int)
    p.add_argument("kind", choices=["aqueue", "raw"])
    p.add_argument("timeout", type=float)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_storage_warning)
    out: dict[str, Any]
    if args.mode == "drain":
        options = {"use_uvloop": args.uvloop}
        out = anyio.run(
            drain, args.url, args.n, args.kind, args.concurrency, backend_options=options
        )
    else:
        fn = latency_raw if args.kind == "raw" else latency_aqueue
        out = {"latencies_ms": anyio.run(fn, args.url, args.n, args.timeout)}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
