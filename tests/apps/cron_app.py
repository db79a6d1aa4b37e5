"""A cron schedule for tests/test_cron_processes.py: every second, recorded in the server."""

from __future__ import annotations

import os

import redis.asyncio as aioredis

import aqueue

TICKS = "cron-app:ticks"
mux = aqueue.Mux()


@mux.cron("* * * * * *", name="cron-app:every-second")
async def every_second(ctx: aqueue.Context) -> None:
    assert ctx.enqueued_at is not None
    r = aioredis.Redis.from_url(os.environ["AQUEUE_URL"])
    await r.rpush(TICKS, f"{int(ctx.enqueued_at.timestamp())}|{os.getpid()}")
    await r.aclose()
