"""aqueue, measured through the same driver as the peers, in its own environment with its
core dependencies only (``.bench-venvs/aqueue/``, see ``envs``).

The jobs are the aqueue suite's (``benchmarks.tasks``: typed msgspec payloads), with
their handlers reporting to the probe like every peer's do.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import redis.asyncio as aioredis

import aqueue
from aqueue._redis.broker import DEFAULT_PREFIX
from aqueue._redis.keys import queue_keys

from ..tasks import Item, Stamp
from .kit import PROBE, Producer, Settled

# Its distribution is aqueue-redis (`aqueue` on PyPI is another project).
DISTRIBUTIONS = ("aqueue-redis", "redis", "hiredis", "msgspec")
BATCH_API = "Client.enqueue_many"
# Chosen: a blocking pool of 100 connections, as in the aqueue suite's enqueue_gather:
# redis-py 8's default pool refuses a 101st concurrent connection, which 1000 gathered
# enqueues would ask for. Serial and batch calls use one connection either way.
POOL = 100

mux = aqueue.Mux()


def _quiet_storage_warning(record: logging.LogRecord) -> bool:
    """Drop the worker's (true) warning that the throwaway server persists nothing."""
    return not record.getMessage().startswith("the server keeps nothing on disk")


@mux.task("bench:item")
async def item(ctx: aqueue.Context, payload: Item) -> None:
    """What the enqueue workloads write (never run)."""


@mux.task("bench:noop")
async def noop(ctx: aqueue.Context) -> None:
    PROBE.done()


@mux.task("bench:stamp")
async def stamp(ctx: aqueue.Context, payload: Stamp) -> None:
    PROBE.stamp(payload.t)
    PROBE.done()


class _Producer(Producer):
    def __init__(self, client: aqueue.Client) -> None:
        self.client = client

    async def item(self, n: int) -> None:
        await self.client.enqueue(item, Item(n=n))

    async def noop(self) -> None:
        await self.client.enqueue(noop)

    async def stamp(self, t: float) -> None:
        await self.client.enqueue(stamp, Stamp(t=t))

    async def items(self, ns: Sequence[int]) -> None:
        await self.client.enqueue_many([aqueue.Job(item, Item(n=n)) for n in ns])

    async def noops(self, k: int) -> None:
        await self.client.enqueue_many([aqueue.Job(noop) for _ in range(k)])


@asynccontextmanager
async def producer(url: str) -> AsyncIterator[Producer]:
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=POOL, timeout=30)
    async with aioredis.Redis.from_pool(pool) as r, aqueue.Client(r) as client:
        yield _Producer(client)


@asynccontextmanager
async def worker(url: str, concurrency: int) -> AsyncIterator[Settled]:
    # Installed here, in the benchmark's worker process, not at import: importing this
    # module (as its tests do) must not change what aqueue logs elsewhere.
    worker_log = logging.getLogger("aqueue.worker")
    if _quiet_storage_warning not in worker_log.filters:
        worker_log.addFilter(_quiet_storage_warning)
    # A task is done once its ack is written: the queue's processed total counts acks.
    stats = queue_keys(DEFAULT_PREFIX, "default").stats

    async with aioredis.Redis.from_url(url) as r:

        async def settled(n: int) -> bool:
            return int(await r.hget(stats, "p") or 0) >= n

        async with aqueue.Worker(mux, url, concurrency=concurrency):
            yield settled
