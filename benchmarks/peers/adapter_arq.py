"""arq: ``ArqRedis.enqueue_job`` to enqueue, ``arq.worker.Worker`` to serve.

Defaults everywhere (pickle, results kept an hour, ``poll_delay`` 0.5 s: arq polls its
queue, which is what its latency figures show), except where noted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool  # type: ignore[import-not-found]
from arq.worker import Worker  # type: ignore[import-not-found]

from .kit import PROBE, Producer, Settled, background, crash_job

DISTRIBUTIONS = ("arq", "redis", "hiredis")
BATCH_API = None  # arq has no batch enqueue


async def item(ctx: dict[str, Any], n: int) -> None:
    """What the enqueue workloads write (never run)."""


async def noop(ctx: dict[str, Any]) -> None:
    """The backlog job: does nothing."""


async def stamp(ctx: dict[str, Any], t: float) -> None:
    PROBE.stamp(t)


async def crash(ctx: dict[str, Any], i: int) -> None:
    await crash_job(i)


async def welcome(ctx: dict[str, Any], email: str, plan: str) -> None:
    """What the web app enqueues (never run)."""


async def _after_job_end(ctx: dict[str, Any]) -> None:
    # arq runs this hook "after job has ended and results have been recorded".
    PROBE.done()


class _Producer(Producer):
    def __init__(self, pool: ArqRedis) -> None:
        self.pool = pool

    async def item(self, n: int) -> None:
        await self.pool.enqueue_job("item", n)

    async def noop(self) -> None:
        await self.pool.enqueue_job("noop")

    async def stamp(self, t: float) -> None:
        await self.pool.enqueue_job("stamp", t)

    async def crash(self, i: int) -> None:
        await self.pool.enqueue_job("crash", i)

    async def signup(self, email: str, plan: str) -> None:
        await self.pool.enqueue_job("welcome", email, plan)


@asynccontextmanager
async def producer(url: str) -> AsyncIterator[Producer]:
    pool = await create_pool(RedisSettings.from_dsn(url))
    try:
        yield _Producer(pool)
    finally:
        await pool.aclose()


@asynccontextmanager
async def worker(url: str, concurrency: int) -> AsyncIterator[Settled]:
    w = Worker(
        functions=[item, noop, stamp, crash, welcome],
        redis_settings=RedisSettings.from_dsn(url),
        # Chosen: max_jobs is arq's concurrency (default 10); every system gets 100.
        max_jobs=concurrency,
        after_job_end=_after_job_end,
        # Chosen: the driver owns the process and stops the worker by cancelling it.
        handle_signals=False,
    )

    async def settled(n: int) -> bool:
        return PROBE.count >= n  # counted once arq has recorded each outcome

    try:
        async with background(w.async_run()):
            yield settled
    finally:
        await w.close()
