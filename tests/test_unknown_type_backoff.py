"""A task of a type the worker has no handler for is tried again within a minute.

It is most likely waiting for a newer worker (a rolling deploy): the retry policy's
back-off (about three weeks over the default 25 retries) would leave it waiting days
after that worker came. So its delay is capped at ``UNKNOWN_TYPE_MAX_DELAY`` (60 s),
whatever the policy says; a known type's failure keeps the policy's delay.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import aqueue
from aqueue import Context, Inspector, Mux, TaskInfo, Worker
from aqueue._worker.runner import UNKNOWN_TYPE_MAX_DELAY

from .helpers import wait_for

pytestmark = pytest.mark.anyio

mux = Mux()


@mux.task("known:fails")
async def fails(ctx: Context) -> None:
    raise RuntimeError("boom")


def an_hour(retry_count: int, error: BaseException, task: TaskInfo) -> float:
    return 3600.0


async def _in_retry(inspector: Inspector, task_id: str) -> TaskInfo:
    async def retrying() -> bool:
        return (await inspector.get_task("default", task_id)).state == "retry"

    await wait_for(retrying, timeout=20)
    return await inspector.get_task("default", task_id)


def _delay(task: TaskInfo) -> float:
    assert task.next_process_at is not None and task.last_failed_at is not None
    return (task.next_process_at - task.last_failed_at).total_seconds()


async def test_an_unknown_type_is_retried_within_a_minute_whatever_the_policy(
    aqueue_url: str,
) -> None:
    assert UNKNOWN_TYPE_MAX_DELAY == 60.0  # as docs/options.md says
    async with (
        aqueue.Client(aqueue_url) as client,
        Inspector(aqueue_url) as inspector,
        Worker(mux, aqueue_url, retry_delay=an_hour),
    ):
        unknown = await client.enqueue("report:v2", {"id": 7})
        known = await client.enqueue(fails)
        unknown_info = await _in_retry(inspector, unknown.id)
        known_info = await _in_retry(inspector, known.id)

    assert unknown_info.retried == 1  # still spends a retry: it is a failed attempt
    assert "no handler for task type 'report:v2'" in (unknown_info.last_error or "")
    assert 0 < _delay(unknown_info) <= UNKNOWN_TYPE_MAX_DELAY + 1
    assert _delay(known_info) == pytest.approx(3600, abs=5)
    assert unknown_info.next_process_at is not None
    assert (unknown_info.next_process_at - datetime.now(UTC)).total_seconds() <= 61
