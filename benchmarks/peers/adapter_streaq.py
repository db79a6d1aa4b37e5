"""streaq: ``RegisteredTask.enqueue`` and ``Worker.enqueue_many`` to enqueue,
``streaq.Worker.run_async`` to serve.

Defaults everywhere (pickle, results kept 5 minutes, per-task INFO log lines built
even when the level drops them), except where noted. Tasks are registered with
``worker.task(fn)``, the call form of streaq's ``@worker.task`` decorator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from streaq import Worker  # type: ignore[import-not-found]

from .kit import PROBE, Producer, Settled, background, crash_job

DISTRIBUTIONS = ("streaq", "coredis")
BATCH_API = "Worker.enqueue_many"


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
    """A streaq Worker with the benchmark tasks registered: streaq enqueues through
    the same object that serves."""

    def __init__(self, url: str, **options: Any) -> None:
        self.worker = Worker(redis_url=url, **options)
        self.item = self.worker.task(item)
        self.noop = self.worker.task(noop)
        self.stamp = self.worker.task(stamp)
        self.crash = self.worker.task(crash)
        self.welcome = self.worker.task(welcome)


class _Producer(Producer):
    def __init__(self, app: _App) -> None:
        self.app = app

    async def item(self, n: int) -> None:
        await self.app.item.enqueue(n)

    async def noop(self) -> None:
        await self.app.noop.enqueue()

    async def stamp(self, t: float) -> None:
        await self.app.stamp.enqueue(t)

    async def crash(self, i: int) -> None:
        await self.app.crash.enqueue(i)

    async def signup(self, email: str, plan: str) -> None:
        await self.app.welcome.enqueue(email, plan)

    async def items(self, ns: Sequence[int]) -> None:
        await self.app.worker.enqueue_many([self.app.item.enqueue(n) for n in ns])

    async def noops(self, k: int) -> None:
        await self.app.worker.enqueue_many([self.app.noop.enqueue() for _ in range(k)])


@asynccontextmanager
async def producer(url: str) -> AsyncIterator[Producer]:
    app = _App(url)
    async with app.worker:
        yield _Producer(app)


@asynccontextmanager
async def worker(url: str, concurrency: int) -> AsyncIterator[Settled]:
    # Chosen: concurrency 100 (streaq's default is 16), as for every system; the driver
    # owns the process and stops the worker by cancelling it, so no signal handlers.
    app = _App(url, concurrency=concurrency, handle_signals=False)
    w = app.worker

    async def settled(n: int) -> bool:
        # Finished tasks are acked and deleted from the stream in one transaction.
        return bool(w.counters["completed"] >= n and await w.queue_size() == 0)

    async with background(w.run_async()):
        yield settled
