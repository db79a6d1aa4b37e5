"""aqueue, measured through the same driver as the peers, in its own environment with its
core dependencies only (``.bench-venvs/aqueue/``, see ``envs``).

The jobs are the aqueue suite's (``benchmarks.tasks``: typed msgspec payloads), with
their handlers reporting to the probe like every peer's do.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import msgspec
import redis.asyncio as aioredis

import aqueue
from aqueue._redis.broker import DEFAULT_PREFIX
from aqueue._redis.keys import queue_keys

from ..tasks import Item, Stamp
from .kit import PROBE, Producer, Settled, crash_job

# Its distribution is aqueue-redis (`aqueue` on PyPI is another project).
DISTRIBUTIONS = ("aqueue-redis", "redis", "hiredis", "msgspec")
BATCH_API = "Client.enqueue_many"

# The crash workload serves this with the CLI: `aqueue worker benchmarks.peers.adapter_aqueue:mux`.
mux = aqueue.Mux()


class Crash(msgspec.Struct):
    """Which of the crash workload's jobs this is."""

    i: int


class Welcome(msgspec.Struct):
    """What the web app's ``POST /signup`` enqueues."""

    email: str
    plan: str


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


@mux.task("bench:crash")
async def crash(ctx: aqueue.Context, payload: Crash) -> None:
    await crash_job(payload.i)


@mux.task("bench:welcome")
async def welcome(ctx: aqueue.Context, payload: Welcome) -> None:
    """What the web app enqueues (never run)."""


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

    async def crash(self, i: int) -> None:
        await self.client.enqueue(crash, Crash(i=i))

    async def signup(self, email: str, plan: str) -> None:
        await self.client.enqueue(welcome, Welcome(email=email, plan=plan))


@asynccontextmanager
async def producer(url: str) -> AsyncIterator[Producer]:
    # The default: a Client of a URL owns its connections (a blocking pool of 100, and
    # the hot path's own; a Client handed a redis-py client goes through redis-py's).
    async with aqueue.Client(url) as client:
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
