"""A cron schedule for tests/test_cron_processes.py: every second, recorded in the server."""

from __future__ import annotations

import os

import redis.asyncio as aioredis

import aqueue

TICKS = "cron-app:ticks"
mux = aqueue.Mux()


@mux.cron("* * * * * *", name="cron-app:every-second")
async def every_second(ctx: aqueue.Context) -> None:
    """Records which task ran where; the tick each task was for is in the cron log."""
    r = aioredis.Redis.from_url(os.environ["AQUEUE_URL"])
    await r.rpush(TICKS, f"{ctx.task_id}|{os.getpid()}")
    await r.aclose()
