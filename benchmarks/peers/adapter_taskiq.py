"""taskiq with taskiq-redis: ``kiq`` to enqueue, ``taskiq.api.run_receiver_task`` to
serve in process (what ``taskiq worker`` runs in each of its processes).

Chosen: ``RedisStreamBroker``, the broker taskiq-redis's README leads with and its only
Redis broker with acknowledgements (``ListQueueBroker`` loses a job whose worker dies),
so it is the one comparable with at-least-once queues. No result backend: taskiq's
default. Defaults everywhere else (JSON, ack once the result is saved).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from taskiq.api import run_receiver_task  # type: ignore[import-not-found]
from taskiq_redis import RedisStreamBroker  # type: ignore[import-not-found]

from .kit import PROBE, Producer, Settled, background, crash_job

DISTRIBUTIONS = ("taskiq", "taskiq-redis", "redis", "hiredis")
BATCH_API = None  # taskiq has no batch kick


async def item(n: int) -> None:
    """What the enqueue workloads write (never run)."""


async def noop() -> None:
    PROBE.done()


async def stamp(t: float) -> None:
    PROBE.stamp(t)
    PROBE.done()


async def crash(i: int) -> None:
    await crash_job(i)


async def welcome(email: str, plan: str) -> None:
    """What the web app enqueues (never run)."""


class _App:
    """A broker with the benchmark tasks registered (``register_task`` is the call form
    of taskiq's ``@broker.task`` decorator)."""

    def __init__(self, url: str) -> None:
        self.broker = RedisStreamBroker(url)
        self.item = self.broker.register_task(item)
        self.noop = self.broker.register_task(noop)
        self.stamp = self.broker.register_task(stamp)
        self.crash = self.broker.register_task(crash)
        self.welcome = self.broker.register_task(welcome)


class _Producer(Producer):
    def __init__(self, app: _App) -> None:
        self.app = app

    async def item(self, n: int) -> None:
        await self.app.item.kiq(n)

    async def noop(self) -> None:
        await self.app.noop.kiq()

    async def stamp(self, t: float) -> None:
        await self.app.stamp.kiq(t)

    async def crash(self, i: int) -> None:
        await self.app.crash.kiq(i)

    async def signup(self, email: str, plan: str) -> None:
        await self.app.welcome.kiq(email, plan)


@asynccontextmanager
async def producer(url: str) -> AsyncIterator[Producer]:
    # Startup also creates the consumer group, at the stream's end ("$", the default):
    # jobs enqueued before the group exists are never delivered, so the backlog's
    # producer starting first is what makes the drain workload see its jobs.
    app = _App(url)
    await app.broker.startup()
    try:
        yield _Producer(app)
    finally:
        await app.broker.shutdown()


@asynccontextmanager
async def worker(url: str, concurrency: int) -> AsyncIterator[Settled]:
    app = _App(url)
    broker = app.broker
    await broker.startup()

    async def settled(n: int) -> bool:
        # Handlers count jobs as they end; taskiq acks (XACK) after that. The stream's
        # pending-entries list holds what is delivered and not yet acked.
        async with Redis(connection_pool=broker.connection_pool) as r:
            pending = await r.xpending(broker.queue_name, broker.consumer_group_name)
        return bool(PROBE.count >= n and pending["pending"] == 0)

    try:
        # Chosen: max_async_tasks 100, which is also taskiq's default.
        async with background(run_receiver_task(broker, max_async_tasks=concurrency)):
            yield settled
    finally:
        await broker.shutdown()
