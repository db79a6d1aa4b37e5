"""Handlers for tests/chaos/test_lifecycle.py, run by real `aqueue worker` subprocesses.

Each handler records what happened to it in the server it works for (the worker's own
AQUEUE_URL), so the test can see starts and cancellations from outside the process.
"""

from __future__ import annotations

import os

import anyio
import redis.asyncio as aioredis

import aqueue

EVENTS = "life:events"

mux = aqueue.Mux()
_redis: aioredis.Redis | None = None


async def record(kind: str, ctx: aqueue.Context) -> None:
    global _redis
    if _redis is None:
        _redis = aioredis.Redis.from_url(os.environ["AQUEUE_URL"])
    await _redis.rpush(EVENTS, f"{kind}|{ctx.task_id}|{os.getpid()}")


@mux.task("life:sleep")
async def sleep(ctx: aqueue.Context, seconds: float) -> str:
    await record("start", ctx)
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await record("cancelled", ctx)
        raise
    await record("done", ctx)
    return "slept"
