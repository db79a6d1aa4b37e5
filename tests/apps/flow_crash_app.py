"""Workflow steps for tests/test_workflow_processes.py: each records its starts on a
recording server (``FLOWTEST_URL``); the worker can SIGKILL itself once at a chosen
point of a step's hand-over (``FLOWTEST_CRASH_AT``), so the next worker must finish it."""

from __future__ import annotations

import os
import signal
from typing import Any

import redis

import aqueue
from aqueue import _flows

QUEUE_URL = os.environ.get("AQUEUE_URL", "redis://127.0.0.1:6379/0")
RECORDS_URL = os.environ.get("FLOWTEST_URL", QUEUE_URL)
CRASH_AT = os.environ.get("FLOWTEST_CRASH_AT", "")
MARK = os.environ.get("FLOWTEST_MARK", "")

_records = redis.Redis.from_url(RECORDS_URL)


def crash_once(point: str) -> None:
    """SIGKILL this process at ``point``, the first time any worker gets there."""
    if point == CRASH_AT and MARK and not os.path.exists(MARK):
        with open(MARK, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)


mux = aqueue.Mux()
worker = aqueue.Worker(
    mux, QUEUE_URL, lease_ttl=2, concurrency=20, queues={"default": 1, "reports": 1}
)


async def after_handler(ctx: aqueue.Context, call_next: Any) -> Any:
    result = await call_next()
    if ctx.task_type == "first":
        crash_once("after_handler")  # the handler returned; its ack was never written
    return result


mux.use(after_handler)


@mux.task("first")
def first(ctx: aqueue.Context, n: int) -> int:
    _records.rpush("flowtest:first", f"{n}|{ctx.retry_count}")
    return n + 1


@mux.task("second")
def second(ctx: aqueue.Context, n: int) -> int:
    _records.rpush("flowtest:second", f"{n}|{ctx.retry_count}")
    return n * 2


@mux.task("member")
def member(ctx: aqueue.Context, n: int) -> int:
    return n


@mux.task("count")
def count(ctx: aqueue.Context, members: list[int]) -> int:
    _records.rpush("flowtest:count", len(members))
    return len(members)


_record = _flows.record_ends
_send = _flows._send_steps


async def record_ends(broker: Any, queue: str, ends: Any, **options: Any) -> None:
    crash_once("before_record")  # the ack with the step's end was written, not recorded
    await _record(broker, queue, ends, **options)


async def send_steps(*args: Any, **options: Any) -> int:
    crash_once("before_write")  # the end was recorded, the step it freed not written
    return await _send(*args, **options)


_flows.record_ends = record_ends
_flows._send_steps = send_steps
