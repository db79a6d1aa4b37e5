"""Producer workloads: one await at a time, 1000 concurrent awaits, ``enqueue_many``.

Each is measured against raw redis-py LPUSHes of a minimal job record issued the same
way, which is the floor any Redis queue's enqueue sits on: aqueue adds validation, the
stored task hash and state, and one script call instead of one LPUSH.
"""

from __future__ import annotations

import asyncio
import functools
import time

import redis.asyncio as aioredis

import aqueue

from .common import RAW_PENDING, Bench, Result
from .tasks import Item, item, raw_record

BATCH = 1000
# Connections of the pool both sides of ``enqueue_gather`` share (redis-py's default size).
POOL = 100


async def enqueue_serial(b: Bench) -> Result:
    """``await client.enqueue(...)`` one task at a time."""
    n = b.n(5_000)
    async with aqueue.Client(b.url) as client, b.redis() as r:

        async def subject() -> float:
            start = time.perf_counter()
            for i in range(n):
                await client.enqueue(item, Item(n=i))
            return n / (time.perf_counter() - start)

        async def baseline() -> float:
            start = time.perf_counter()
            for i in range(n):
                await r.lpush(RAW_PENDING, raw_record("bench:item", {"n": i}))
            return n / (time.perf_counter() - start)

        await client.enqueue(item, Item(n=-1))  # connect and load the scripts first
        await r.ping()
        rate, base = await b.alternate(subject, baseline)
    return Result(
        "enqueue_serial", n, "tasks/s", rate, base, "raw LPUSH, one await at a time", "higher"
    )


async def enqueue_gather(b: Bench) -> Result:
    """``asyncio.gather`` of 1000 ``enqueue`` calls at a time, on ``Client(url)``: its own
    connections (at most 100; calls past them wait in line), the way most producers
    connect. The baseline's redis-py client gets a blocking pool of the same size."""
    async with aqueue.Client(b.url) as client:  # its broker keeps up to 100 (POOL)
        return await _gather(b, client, "enqueue_gather")


async def enqueue_gather_client(b: Bench) -> Result:
    """The same with a ``redis.asyncio`` client passed in: aqueue then sends through
    redis-py's public API (``execute_command``), not its own connections."""
    async with _pooled(b.url) as ours, aqueue.Client(ours) as client:
        return await _gather(b, client, "enqueue_gather_client")


async def _gather(b: Bench, client: aqueue.Client, name: str) -> Result:
    n = b.n(10_000)
    size = min(BATCH, n)
    async with _pooled(b.url) as r:
        subject = functools.partial(_enqueue_gathered, client, n, size)

        async def baseline() -> float:
            start = time.perf_counter()
            for lo in range(0, n, size):
                await asyncio.gather(
                    *(
                        r.lpush(RAW_PENDING, raw_record("bench:item", {"n": i}))
                        for i in range(lo, min(lo + size, n))
                    )
                )
            return n / (time.perf_counter() - start)

        # Open the pools' connections before timing: a long-lived producer has them.
        await asyncio.gather(*(client.enqueue(item, Item(n=-1)) for _ in range(size)))
        await asyncio.gather(*(r.ping() for _ in range(size)))
        rate, base = await b.alternate(subject, baseline)
    return Result(
        name,
        n,
        "tasks/s",
        rate,
        base,
        f"raw LPUSH, gather of {size}",
        "higher",
        extra={"pool_connections": POOL},
    )


async def _enqueue_gathered(client: aqueue.Client, n: int, size: int) -> float:
    """``n`` ``enqueue`` calls, ``asyncio.gather`` of ``size`` at a time: tasks/s."""
    start = time.perf_counter()
    for lo in range(0, n, size):
        await asyncio.gather(
            *(client.enqueue(item, Item(n=i)) for i in range(lo, min(lo + size, n)))
        )
    return n / (time.perf_counter() - start)


async def enqueue_gather_pipelined(b: Bench) -> Result:
    """The same gather of 1000 ``enqueue`` calls against the server's pipelined rate:
    redis-py pipelines of 1000 LPUSH (the issue's bar for concurrent enqueues, which
    share round trips: aqueue/_redis/batcher.py)."""
    n = b.n(10_000)
    size = min(BATCH, n)
    async with aqueue.Client(b.url) as client, b.redis() as r:
        subject = functools.partial(_enqueue_gathered, client, n, size)

        async def baseline() -> float:
            start = time.perf_counter()
            for lo in range(0, n, size):
                pipe = r.pipeline(transaction=False)
                for i in range(lo, min(lo + size, n)):
                    pipe.lpush(RAW_PENDING, raw_record("bench:item", {"n": i}))
                await pipe.execute()
            return n / (time.perf_counter() - start)

        await client.enqueue(item, Item(n=-1))
        await r.ping()
        rate, base = await b.alternate(subject, baseline)
    return Result(
        "enqueue_gather_pipelined", n, "tasks/s", rate, base,
        f"raw LPUSH, pipelined {size} at a time", "higher",
    )  # fmt: skip


def _pooled(url: str) -> aioredis.Redis:
    """A redis-py client whose calls wait for one of ``POOL`` connections."""
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=POOL, timeout=30)
    return aioredis.Redis.from_pool(pool)


async def enqueue_many(b: Bench) -> Result:
    """``client.enqueue_many`` of 1000 jobs per call."""
    n = b.n(50_000, minimum=BATCH)
    async with aqueue.Client(b.url) as client, b.redis() as r:

        async def subject() -> float:
            start = time.perf_counter()
            for lo in range(0, n, BATCH):
                await client.enqueue_many(
                    [aqueue.Job(item, Item(n=i)) for i in range(lo, min(lo + BATCH, n))]
                )
            return n / (time.perf_counter() - start)

        async def baseline() -> float:
            start = time.perf_counter()
            for lo in range(0, n, BATCH):
                pipe = r.pipeline(transaction=False)
                for i in range(lo, min(lo + BATCH, n)):
                    pipe.lpush(RAW_PENDING, raw_record("bench:item", {"n": i}))
                await pipe.execute()
            return n / (time.perf_counter() - start)

        await client.enqueue_many([aqueue.Job(item, Item(n=-1))])
        await r.ping()
        rate, base = await b.alternate(subject, baseline)
    return Result(
        "enqueue_many",
        n,
        "tasks/s",
        rate,
        base,
        f"raw LPUSH pipelined by {BATCH}",
        "higher",
    )
