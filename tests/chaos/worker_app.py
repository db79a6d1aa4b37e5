"""The app the crash tests run in real worker subprocesses.

Started as ``aqueue worker tests.chaos.worker_app:worker --url URL ...`` with the
repository as working directory. The ``worker`` attribute carries the settings the
command line has no flag for: its ``lease_ttl`` comes from ``CHAOS_LEASE_TTL``.

Handlers report what happened to the same server the worker uses (``AQUEUE_URL``),
so the test process can check it after the worker is dead:

* ``chaos:starts`` HASH  task id -> how many times a handler started it
* ``chaos:done``   HASH  task id -> how many times a handler finished it
* ``chaos:events`` LIST  one JSON ``Event`` per start, finish and suicide
"""

from __future__ import annotations

import os
import signal
import time

import anyio
import msgspec
import redis
import redis.asyncio as aioredis

import aqueue

STARTS = "chaos:starts"
DONE = "chaos:done"
EVENTS = "chaos:events"


class Work(msgspec.Struct):
    """What ``chaos:work`` does: stay busy ``seconds``, then finish."""

    seconds: float = 0.0
    # Stay busy only on the task's first start; a re-run finishes at once.
    first_only: bool = False
    # Stay busy by blocking the event loop (time.sleep) and finish without a single
    # await after it, so that nothing else in the worker runs between the wake-up and
    # the handler's return.
    block: bool = False


class Event(msgspec.Struct):
    kind: str  # "start" | "finish" | "suicide"
    id: str
    pid: int
    t: float  # time.time() in the worker
    retry: int  # ctx.retry_count


mux = aqueue.Mux()

_client: aioredis.Redis | None = None


def _url() -> str:
    return os.environ["AQUEUE_URL"]


def _redis() -> aioredis.Redis:
    # One client per worker process (one event loop): handlers share its pool.
    global _client
    if _client is None:
        _client = aioredis.Redis.from_url(_url())
    return _client


def _event(kind: str, ctx: aqueue.Context) -> bytes:
    return msgspec.json.encode(Event(kind, ctx.task_id, os.getpid(), time.time(), ctx.retry_count))


async def _started(ctx: aqueue.Context) -> int:
    """Record a start; returns how many times this task has started so far."""
    pipe = _redis().pipeline(transaction=True)
    pipe.hincrby(STARTS, ctx.task_id, 1)
    pipe.rpush(EVENTS, _event("start", ctx))
    count, _ = await pipe.execute()
    return int(count)


async def _finished(ctx: aqueue.Context) -> None:
    pipe = _redis().pipeline(transaction=True)
    pipe.hincrby(DONE, ctx.task_id, 1)
    pipe.rpush(EVENTS, _event("finish", ctx))
    await pipe.execute()


def _finished_blocking(ctx: aqueue.Context) -> None:
    client = redis.Redis.from_url(_url())
    try:
        pipe = client.pipeline(transaction=True)
        pipe.hincrby(DONE, ctx.task_id, 1)
        pipe.rpush(EVENTS, _event("finish", ctx))
        pipe.execute()
    finally:
        client.close()


@mux.task("chaos:work", max_retry=5)
async def work(ctx: aqueue.Context, w: Work) -> dict[str, int]:
    """Returns the pid of the worker process that ran it (the stored result)."""
    starts = await _started(ctx)
    if w.seconds > 0 and (starts == 1 or not w.first_only):
        if w.block:
            time.sleep(w.seconds)  # noqa: ASYNC251 -- blocking the loop is the point
            _finished_blocking(ctx)
            return {"pid": os.getpid()}
        await anyio.sleep(w.seconds)
    await _finished(ctx)
    return {"pid": os.getpid()}


@mux.task("chaos:suicide", max_retry=2)
async def suicide(ctx: aqueue.Context) -> None:
    """Kills the worker running it, every time: a poison task."""
    await _started(ctx)
    await _redis().rpush(EVENTS, _event("suicide", ctx))
    os.kill(os.getpid(), signal.SIGKILL)


# The target of the command line. Its URL is never used: every test passes --url.
worker = aqueue.Worker(
    mux,
    "redis://127.0.0.1:1/0",
    lease_ttl=float(os.environ.get("CHAOS_LEASE_TTL", "3")),
    scheduler=False,
)
