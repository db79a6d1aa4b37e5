"""The driver every benchmark child process runs, in the system's own interpreter.

Standard library only: it runs in each peer's virtual environment. Usage (by the
runner only)::

    python -m benchmarks.peers.child SYSTEM info
    python -m benchmarks.peers.child SYSTEM enqueue {serial,gather,batch} URL N
    python -m benchmarks.peers.child SYSTEM fill URL N
    python -m benchmarks.peers.child SYSTEM drain URL N CONCURRENCY TIMEOUT
    python -m benchmarks.peers.child SYSTEM serve URL N TIMEOUT
    python -m benchmarks.peers.child SYSTEM produce URL N RATE
    python -m benchmarks.peers.child SYSTEM crash_fill URL N
    python -m benchmarks.peers.child SYSTEM crash_serve URL CONCURRENCY

Each prints one JSON line on stdout at the end (``serve`` prints ``ready`` first, and
``produce`` waits for a ``go`` line on stdin before it starts the clock):

- ``info``: ``versions`` (distribution -> version) and ``batch_api``;
- ``enqueue``: ``rate`` (jobs/s) of N ``item`` jobs, after a warm-up that connects (and
  for ``gather`` opens the connections 1000 concurrent calls use);
- ``fill``: N ``noop`` jobs, with the batch API when there is one, else gathers of 1000;
- ``drain``: ``seconds`` from starting a worker to the N-th job settled on the server,
  ``rss_idle_mb`` (peak RSS after imports) and ``rss_peak_mb`` (peak RSS at the end);
- ``serve``: a worker that runs one warm-up ``noop`` (so it is connected and
  polling), says ``ready``, then reports ``latencies_ms`` of the next N ``stamp`` jobs;
- ``produce``: enqueues the warm-up ``noop``, waits for ``go``, then N ``stamp`` jobs
  at RATE per second on a fixed schedule;
- ``crash_fill``: N ``crash`` jobs, ``crash(0)`` to ``crash(N - 1)``, by gathers of 100;
- ``crash_serve``: a worker of CONCURRENCY that serves until the process is killed
  (the crash workload's, for the peers: aqueue's runs as ``aqueue worker``). It prints
  nothing: its jobs write to the ledger (``kit.Ledger``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Coroutine
from importlib import metadata
from typing import Any, cast

from . import kit
from .kit import PROBE, Adapter, Producer, peak_rss_mb, until, wait

GATHER = 1000  # concurrent enqueue calls per gather (the aqueue suite's figure)
BATCH = 1000  # jobs per batch enqueue call (the aqueue suite's figure)


def load(system: str) -> Adapter:
    return cast(Adapter, importlib.import_module(f"benchmarks.peers.adapter_{system}"))


async def enqueue(adapter: Adapter, url: str, mode: str, n: int) -> dict[str, Any]:
    async with adapter.producer(url) as p:
        if mode == "serial":
            await p.item(-1)
            start = time.perf_counter()
            for i in range(n):
                await p.item(i)
        elif mode == "gather":
            size = min(GATHER, n)
            await asyncio.gather(*(p.item(-1) for _ in range(size)))
            start = time.perf_counter()
            for lo in range(0, n, size):
                await asyncio.gather(*(p.item(i) for i in range(lo, min(lo + size, n))))
        else:
            await p.items([-1])
            start = time.perf_counter()
            for lo in range(0, n, BATCH):
                await p.items(range(lo, min(lo + BATCH, n)))
        return {"rate": n / (time.perf_counter() - start)}


async def fill(adapter: Adapter, url: str, n: int) -> dict[str, Any]:
    async with adapter.producer(url) as p:
        for lo in range(0, n, BATCH):
            k = min(BATCH, n - lo)
            if adapter.BATCH_API:
                await p.noops(k)
            else:
                await asyncio.gather(*(p.noop() for _ in range(k)))
    return {"n": n}


async def drain(
    adapter: Adapter, url: str, n: int, concurrency: int, timeout: float
) -> dict[str, Any]:
    idle = peak_rss_mb()
    reached = PROBE.expect(n)
    start = time.perf_counter()
    async with adapter.worker(url, concurrency) as settled:
        await wait(reached, timeout)
        while not await settled(n):  # noqa: ASYNC110  # polls the server, no event to await
            await asyncio.sleep(0.002)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_idle_mb": idle, "rss_peak_mb": peak_rss_mb()}


async def serve(adapter: Adapter, url: str, n: int, timeout: float) -> dict[str, Any]:
    warm = PROBE.expect(1)
    async with adapter.worker(url, 100) as _:
        await wait(warm, timeout)
        PROBE.latencies_ms.clear()
        reached = PROBE.expect(n)
        print("ready", flush=True)
        await wait(reached, timeout)
        latencies = PROBE.latencies_ms[:n]
    return {"latencies_ms": latencies}


async def produce(adapter: Adapter, url: str, n: int, rate: float) -> dict[str, Any]:
    async with adapter.producer(url) as p:
        await p.noop()
        go = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if go.strip() != "go":
            raise RuntimeError(f"expected 'go' on stdin, got {go!r}")
        await _produce(p, n, rate)
    return {"n": n}


async def crash_fill(adapter: Adapter, url: str, n: int) -> dict[str, Any]:
    async with adapter.producer(url) as p:
        for lo in range(0, n, 100):
            await asyncio.gather(*(p.crash(i) for i in range(lo, min(lo + 100, n))))
    return {"n": n}


async def crash_serve(adapter: Adapter, url: str, concurrency: int) -> dict[str, Any]:
    async with adapter.worker(url, concurrency) as _:
        await asyncio.Event().wait()  # until the runner kills the process
    return {}


async def _produce(p: Producer, n: int, rate: float) -> None:
    start = time.monotonic()
    for i in range(n):
        await until(start + i / rate)
        await p.stamp(time.time())


def info(adapter: Adapter) -> dict[str, Any]:
    versions = {d: metadata.version(d) for d in adapter.DISTRIBUTIONS}
    return {"versions": versions, "batch_api": adapter.BATCH_API}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.child")
    parser.add_argument("system")
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("info")
    p = sub.add_parser("enqueue")
    p.add_argument("how", choices=["serial", "gather", "batch"])
    p.add_argument("url")
    p.add_argument("n", type=int)
    p = sub.add_parser("fill")
    p.add_argument("url")
    p.add_argument("n", type=int)
    p = sub.add_parser("drain")
    p.add_argument("url")
    p.add_argument("n", type=int)
    p.add_argument("concurrency", type=int)
    p.add_argument("timeout", type=float)
    p = sub.add_parser("serve")
    p.add_argument("url")
    p.add_argument("n", type=int)
    p.add_argument("timeout", type=float)
    p = sub.add_parser("produce")
    p.add_argument("url")
    p.add_argument("n", type=int)
    p.add_argument("rate", type=float)
    p = sub.add_parser("crash_fill")
    p.add_argument("url")
    p.add_argument("n", type=int)
    p = sub.add_parser("crash_serve")
    p.add_argument("url")
    p.add_argument("concurrency", type=int)
    args = parser.parse_args(argv)
    # The systems' own per-job INFO lines stay off, as in a quiet production setup.
    logging.basicConfig(level=logging.WARNING)
    adapter = load(args.system)
    if args.mode == "info":
        print(json.dumps(info(adapter)), flush=True)
        return 0
    work: Coroutine[Any, Any, dict[str, Any]]
    if args.mode == "enqueue":
        work = enqueue(adapter, args.url, args.how, args.n)
    elif args.mode == "fill":
        work = fill(adapter, args.url, args.n)
    elif args.mode == "drain":
        work = drain(adapter, args.url, args.n, args.concurrency, args.timeout)
    elif args.mode == "serve":
        work = serve(adapter, args.url, args.n, args.timeout)
    elif args.mode == "crash_fill":
        work = crash_fill(adapter, args.url, args.n)
    elif args.mode == "crash_serve":
        work = crash_serve(adapter, args.url, args.concurrency)
    else:
        work = produce(adapter, args.url, args.n, args.rate)
    asyncio.run(report(work))
    return 0


async def report(work: Coroutine[Any, Any, dict[str, Any]]) -> None:
    """Print the figures of ``work``; exit at once if a worker task would not stop,
    since ``asyncio.run`` would wait for it forever on its way out."""
    print(json.dumps(await work), flush=True)
    if kit.ABANDONED:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
