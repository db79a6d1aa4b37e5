"""Handlers for tests/test_flow_processes.py. Each records, on a recording server of its
own (``FLOWTEST_URL``), its start (in the server's clock), its tenant and how many of its
kind ran at once, so that limits can be judged across worker processes."""

from __future__ import annotations

import os

import anyio
import msgspec
import redis.asyncio as aioredis

import aqueue

QUEUE_URL = os.environ.get("AQUEUE_URL", "redis://127.0.0.1:6379/0")
RECORDS_URL = os.environ.get("FLOWTEST_URL", QUEUE_URL)

mux = aqueue.Mux()
# For the crash test: a lease that lapses quickly, so a dead worker's slot is freed soon.
short_lease = aqueue.Worker(mux, QUEUE_URL, lease_ttl=2, concurrency=4)


class Work(msgspec.Struct):
    n: int
    tenant: str = ""
    hold: float = 0.0
    hold_first: float = 0.0  # held on the first attempt only


_records: aioredis.Redis | None = None


def records() -> aioredis.Redis:
    global _records
    if _records is None:
        _records = aioredis.Redis.from_url(RECORDS_URL)
    return _records


async def record(ctx: aqueue.Context, w: Work) -> None:
    """Log the start, count the running, hold, uncount."""
    r = records()
    seconds, micros = await r.time()
    kind = ctx.task_type
    counter = f"flowtest:running:{kind}:{w.tenant}"
    running = await r.incr(counter)
    entry = f"{seconds * 1000 + micros // 1000}|{w.n}|{w.tenant}|{running}|{ctx.retry_count}"
    await r.rpush(f"flowtest:starts:{kind}", entry)
    try:
        await anyio.sleep(w.hold_first if ctx.retry_count == 0 and w.hold_first else w.hold)
    finally:
        with anyio.CancelScope(shield=True):
            await r.decr(counter)
    await r.rpush(f"flowtest:done:{kind}", f"{w.n}|{ctx.retry_count}")


@mux.task("capped", concurrency_limit=2)
async def capped(ctx: aqueue.Context, w: Work) -> None:
    await record(ctx, w)


@mux.task("rated", rate_limit="10/s")
async def rated(ctx: aqueue.Context, w: Work) -> None:
    await record(ctx, w)


@mux.task("tenant", concurrency_limit=1, limit_key=lambda w: w.tenant)
async def tenant(ctx: aqueue.Context, w: Work) -> None:
    await record(ctx, w)


@mux.task("single", concurrency_limit=1, max_retry=3)
async def single(ctx: aqueue.Context, w: Work) -> None:
    await record(ctx, w)


@mux.task("free")
async def free(ctx: aqueue.Context, w: Work) -> None:
    await record(ctx, w)
