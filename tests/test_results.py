"""Client.result: waiting for a task's outcome without polling."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

import aqueue
from aqueue import Context, Mux, Worker

pytestmark = pytest.mark.anyio

mux = Mux()


@mux.task("square", retention=60)
async def square(ctx: Context, n: int) -> int:
    for step in (1, 2, 3):
        await ctx.progress({"step": step})
        await anyio.sleep(0.05)
    return n * n


@mux.task("broken", retention=60, max_retry=1)
async def broken(ctx: Context) -> None:
    raise ValueError(f"broken on attempt {ctx.retry_count + 1}")


@mux.task("forgetful", retention=0)
async def forgetful(ctx: Context) -> int:
    return 1


@mux.task("slow", retention=60)
async def slow(ctx: Context) -> None:
    await anyio.sleep(30)


def quick(n: int, e: BaseException, t: aqueue.TaskInfo) -> float:
    return 0.0


async def test_result_returns_the_handlers_value_and_reports_progress(url: str) -> None:
    seen: list[Any] = []
    async with aqueue.Client(url) as client, Worker(mux, url):
        info = await client.enqueue(square, 7)
        started = time.monotonic()
        value = await client.result(info, timeout=10, on_progress=seen.append)
        waited = time.monotonic() - started
        # Already finished: answered from the stored state.
        assert await client.result(info.id, queue="default", timeout=1) == 49
    assert value == 49
    assert seen[-1] == {"step": 3}
    assert waited < 5


async def test_result_of_an_archived_task_raises_task_failed(url: str) -> None:
    async with aqueue.Client(url) as client, Worker(mux, url, retry_delay=quick):
        info = await client.enqueue(broken)
        with pytest.raises(aqueue.TaskFailed, match="broken on attempt 2") as failed:
            await client.result(info, timeout=10)
    assert failed.value.last_error == "ValueError: broken on attempt 2"


async def test_result_times_out(url: str) -> None:
    async with aqueue.Client(url) as client, Worker(mux, url):
        info = await client.enqueue(slow)
        started = time.monotonic()
        with pytest.raises(aqueue.ResultTimeout, match=info.id):
            await client.result(info, timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 3
        await client.cancel("default", info.id)


async def test_result_of_a_cancelled_running_task_raises_task_failed(url: str) -> None:
    async with aqueue.Client(url) as client, Worker(mux, url):
        info = await client.enqueue(slow)

        async def cancel_soon() -> None:
            await anyio.sleep(0.2)
            await client.cancel("default", info.id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_soon)
            with pytest.raises(aqueue.TaskFailed, match="cancelled"):
                await client.result(info, timeout=10)


async def test_result_needs_retention_and_says_so(url: str) -> None:
    async with aqueue.Client(url) as client:
        info = await client.enqueue(forgetful)
        with pytest.raises(aqueue.AqueueError, match="retention"):
            await client.result(info, timeout=1)
        with pytest.raises(aqueue.TaskNotFound):
            await client.result("no-such-task", timeout=1)


async def test_result_of_a_bare_id_from_another_queue_says_to_pass_queue(url: str) -> None:
    """A bare id is looked up in queue "default" unless told otherwise: the error says
    how to point at the right queue, and either way works."""
    async with aqueue.Client(url) as client:
        info = await client.enqueue("elsewhere", queue="reports", retention=60)
        with pytest.raises(aqueue.TaskNotFound) as caught:
            await client.result(info.id, timeout=1)
        assert str(caught.value) == (
            f"no task {info.id!r} in queue 'default' (pass queue=... for a task of another "
            "queue, or the TaskInfo that enqueue returned)"
        )
        with pytest.raises(aqueue.ResultTimeout, match="in queue 'reports'"):
            await client.result(info.id, queue="reports", timeout=0.2)
        with pytest.raises(aqueue.ResultTimeout, match="in queue 'reports'"):
            await client.result(info, timeout=0.2)
