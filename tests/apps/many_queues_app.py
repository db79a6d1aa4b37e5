"""A worker serving many queues (``MQ_QUEUES``, default 200: ``m0`` .. ``m199``) for
tests/test_many_queues.py; ``MQ_LOOK`` sets its reaper's slice. ``mq:hold`` records its
start on the recording server (``MQ_RECORDS``) and sleeps for its payload's seconds;
``mq:mark`` records its start."""

from __future__ import annotations

import os
import time

import anyio
import redis

import aqueue
from aqueue._worker import reaper

QUEUE_URL = os.environ.get("AQUEUE_URL", "redis://127.0.0.1:6379/0")
RECORDS_URL = os.environ.get("MQ_RECORDS", QUEUE_URL)
QUEUES = [f"m{i}" for i in range(int(os.environ.get("MQ_QUEUES", "200")))]

# The queues a reaper pass looks at when no worker died (MQ_LOOK=1: only the lease
# index can find a dead worker's task in time).
reaper.LOOK_EACH_PASS = int(os.environ.get("MQ_LOOK", str(reaper.LOOK_EACH_PASS)))

_records = redis.Redis.from_url(RECORDS_URL)
mux = aqueue.Mux()
worker = aqueue.Worker(
    mux, QUEUE_URL, queues=dict.fromkeys(QUEUES, 1), concurrency=10,
    lease_ttl=float(os.environ.get("MQ_LEASE_TTL", "2")),
)  # fmt: skip


@mux.task("mq:hold")
async def hold(ctx: aqueue.Context, seconds: float) -> None:
    _records.rpush("mq:starts", f"{ctx.task_id}|{ctx.queue}|{ctx.retry_count}|{time.time()}")
    await anyio.sleep(seconds)


@mux.task("mq:mark")
async def mark(ctx: aqueue.Context) -> None:
    _records.rpush("mq:starts", f"{ctx.task_id}|{ctx.queue}|{ctx.retry_count}|{time.time()}")
