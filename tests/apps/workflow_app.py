"""Workflow steps for tests/test_workflow_subprocess.py, run by `aqueue worker` processes.

Each step records on a recording server (``FLOWTEST_URL``, a plain Valkey whatever kind
the queue server is, ``AQUEUE_URL``): its task id when it starts, and when its handler
returns a ``Run`` with what it received and its start and end as numbers drawn from one
server-side counter. Steps run in different processes, so their order is judged by
that one counter, not by any process's clock.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import redis.asyncio as aioredis

import aqueue

QUEUE_URL = os.environ.get("AQUEUE_URL", "redis://127.0.0.1:6379/0")
RECORDS_URL = os.environ.get("FLOWTEST_URL", QUEUE_URL)

# Queues whose hash tags land on different masters of the 3-master test cluster, so
# that a flow's steps hand over between masters (as in tests/test_workflows.py).
QUEUES = ["default", "images", "reports"]

# Keys on the recording server.
SEQ = "wftest:seq"  # the counter every start and end draws from
STARTS = "wftest:starts"  # task ids, as each handler starts
RUNS = "wftest:runs"  # a JSON ``Run`` as each handler returns
CANCELLED = "wftest:cancelled"  # "<task id>|<why>" as a handler is cancelled


class Url(msgspec.Struct):
    url: str


class Page(msgspec.Struct):
    url: str
    size: int


class Nap(msgspec.Struct):
    """A step that holds its slot ``seconds`` and returns its ``label``."""

    label: str
    seconds: float = 0.0


class Run(msgspec.Struct):
    """One run of a step, recorded as its handler returned."""

    task_id: str
    task_type: str
    flow_id: str | None
    received: Any  # the payload, as JSON
    received_type: str  # the payload's Python type: proves it was decoded by annotation
    inputs: Any  # ctx.inputs
    start: int
    end: int


_records: aioredis.Redis | None = None


def records() -> aioredis.Redis:
    """The recording server, connected on first use (in the worker's event loop)."""
    global _records
    if _records is None:
        _records = aioredis.Redis.from_url(RECORDS_URL)
    return _records


@asynccontextmanager
async def recorded(ctx: aqueue.Context, received: Any) -> AsyncIterator[None]:
    """Record the start, run the body, record the ``Run``. A body that raises records
    no end: a failed step has no ``Run``."""
    r = records()
    start = await r.incr(SEQ)
    await r.rpush(STARTS, ctx.task_id)
    yield
    end = await r.incr(SEQ)
    run = Run(
        task_id=ctx.task_id,
        task_type=ctx.task_type,
        flow_id=ctx.flow_id,
        received=received,
        received_type=type(received).__name__,
        inputs=ctx.inputs,
        start=start,
        end=end,
    )
    await r.rpush(RUNS, msgspec.json.encode(run))


mux = aqueue.Mux()
worker = aqueue.Worker(mux, QUEUE_URL, queues=dict.fromkeys(QUEUES, 1), concurrency=10)


@mux.task("fetch", queue="images")
async def fetch(ctx: aqueue.Context, u: Url) -> Page:
    async with recorded(ctx, u):
        return Page(u.url, len(f"page of {u.url}"))


@mux.task("parse")
async def parse(ctx: aqueue.Context, page: Page) -> int:  # gets fetch's result, typed
    async with recorded(ctx, page):
        return page.size


@mux.task("store", queue="reports")
async def store(ctx: aqueue.Context, n: int) -> str:
    async with recorded(ctx, n):
        return f"stored {n}"


@mux.task("square", queue="images")
async def square(ctx: aqueue.Context, x: int) -> int:
    async with recorded(ctx, x):
        return x * x


@mux.task("total", queue="reports")
async def total(ctx: aqueue.Context, xs: list[int]) -> int:
    async with recorded(ctx, xs):
        return sum(xs)


@mux.task("labelled")
async def labelled(ctx: aqueue.Context, label: str) -> str:
    async with recorded(ctx, label):
        return f"{label}:{ctx.inputs}"


@mux.task("pair", queue="reports")
async def pair(ctx: aqueue.Context, both: tuple[int, str]) -> str:  # [result b, result c]
    async with recorded(ctx, both):
        return f"{both[0]}+{both[1]}"


@mux.task("nap")
async def nap(ctx: aqueue.Context, n: Nap) -> str:
    async with recorded(ctx, n):
        await anyio.sleep(n.seconds)
        return n.label


@mux.task("boom", max_retry=0)
async def boom(ctx: aqueue.Context) -> None:
    async with recorded(ctx, None):
        raise RuntimeError("exploded")


@mux.task("wait", queue="images", timeout=120)
async def wait(ctx: aqueue.Context) -> None:
    """Sleeps far longer than a test waits: it ends early only if it is cancelled."""
    async with recorded(ctx, None):
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await records().rpush(CANCELLED, f"{ctx.task_id}|{ctx.cancelled_by}")
            raise
