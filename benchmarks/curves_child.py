"""The worker side of the cost curves (``benchmarks/curves.py``), in its own process.

    python -m benchmarks.curves_child URL QUEUES DRAIN LATENCY [--limit-keys]

Serves ``QUEUES`` queues (``c0`` .. ``c<QUEUES-1>``, equal weights, concurrency 100).
Prints one JSON line ``{"drain_s": ...}`` once ``DRAIN`` no-op tasks ran (from the
worker's start: imports excluded), then ``idle`` (the parent measures the idle server
then), then ``{"latencies_ms": [...]}`` once ``LATENCY`` stamped tasks ran: each one's
enqueue-to-start delay.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import anyio
import msgspec

import aqueue

CONCURRENCY = 100


class Stamp(msgspec.Struct):
    t: float


def queue_names(n: int) -> list[str]:
    return [f"c{i}" for i in range(n)]


async def serve(url: str, queues: int, drain: int, latency: int, max_archived: int) -> None:
    done = 0
    drained = anyio.Event()
    seen: list[float] = []
    measured = anyio.Event()
    mux = aqueue.Mux()

    @mux.task("curve:noop")
    async def noop(ctx: aqueue.Context) -> None:
        nonlocal done
        done += 1
        if done >= drain:
            drained.set()

    @mux.task("curve:stamp")
    async def stamp(ctx: aqueue.Context, s: Stamp) -> None:
        seen.append((time.time() - s.t) * 1000)
        if len(seen) >= latency:
            measured.set()

    weights = dict.fromkeys(queue_names(queues), 1)
    started = time.perf_counter()
    worker = aqueue.Worker(
        mux, url, queues=weights, concurrency=CONCURRENCY, max_archived=max_archived
    )
    async with worker:
        if drain:
            await drained.wait()
        print(json.dumps({"drain_s": time.perf_counter() - started}), flush=True)
        print("idle", flush=True)
        await measured.wait()
        print(json.dumps({"latencies_ms": seen}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.curves_child")
    parser.add_argument("url")
    parser.add_argument("queues", type=int)
    parser.add_argument("drain", type=int)
    parser.add_argument("latency", type=int)
    parser.add_argument("--max-archived", type=int, default=10_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    anyio.run(serve, args.url, args.queues, args.drain, args.latency, args.max_archived)


if __name__ == "__main__":
    main()
