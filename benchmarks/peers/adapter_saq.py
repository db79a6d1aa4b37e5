"""SAQ: ``Queue.enqueue`` to enqueue, ``saq.Worker`` to serve (the Redis queue).

Defaults everywhere (JSON, ``Queue.from_url``, blocking dequeue), except where noted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from saq import Queue, Worker  # type: ignore[import-not-found]

from .kit import PROBE, Producer, Settled, background, crash_job

DISTRIBUTIONS = ("saq", "redis", "hiredis")
BATCH_API = None  # SAQ has no batch enqueue (``Queue.map`` enqueues one by one and waits)


async def item(ctx: dict[str, Any], *, n: int) -> None:
    """What the enqueue workloads write (never run)."""


async def noop(ctx: dict[str, Any]) -> None:
    """The backlog job: does nothing."""


async def stamp(ctx: dict[str, Any], *, t: float) -> None:
    PROBE.stamp(t)


async def crash(ctx: dict[str, Any], *, i: int) -> None:
    await crash_job(i)


async def welcome(ctx: dict[str, Any], *, email: str, plan: str) -> None:
    """What the web app enqueues (never run)."""


async def _after_process(ctx: dict[str, Any]) -> None:
    # SAQ runs this hook after it has written the job's outcome (``job.finish``).
    PROBE.done()


class _Producer(Producer):
    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    async def item(self, n: int) -> None:
        await self.queue.enqueue("item", n=n)

    async def noop(self) -> None:
        await self.queue.enqueue("noop")

    async def stamp(self, t: float) -> None:
        await self.queue.enqueue("stamp", t=t)

    async def crash(self, i: int) -> None:
        await self.queue.enqueue("crash", i=i)

    async def signup(self, email: str, plan: str) -> None:
        await self.queue.enqueue("welcome", email=email, plan=plan)


@asynccontextmanager
async def producer(url: str) -> AsyncIterator[Producer]:
    queue = Queue.from_url(url)
    await queue.connect()
    try:
        yield _Producer(queue)
    finally:
        await queue.disconnect()


@asynccontextmanager
async def worker(url: str, concurrency: int) -> AsyncIterator[Settled]:
    queue = Queue.from_url(url)
    await queue.connect()
    # Chosen: concurrency 100 (SAQ's default is 10), as for every system.
    w = Worker(
        queue,
        [item, noop, stamp, crash, welcome],
        concurrency=concurrency,
        after_process=_after_process,
    )

    async def settled(n: int) -> bool:
        return PROBE.count >= n  # counted once SAQ has written each outcome

    try:
        async with background(w.start()):
            yield settled
            await w.stop()
    finally:
        await queue.disconnect()
