"""Cancellation, the Inspector's view of a task, and durable enqueue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import redis

import aqueue
from aqueue import Context, Mux, Worker
from aqueue.server import EmbeddedServer
from aqueue.testing import drain

from .conftest import REDIS7_URL
from .helpers import Peek, wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
async def peek(url: str) -> AsyncIterator[Peek]:
    p = Peek(url)
    yield p
    await p.close()


def blocking_mux() -> tuple[Mux, anyio.Event, list[str]]:
    mux = Mux()
    started = anyio.Event()
    cancelled: list[str] = []

    @mux.task("block", max_retry=5)
    async def block(ctx: Context) -> None:
        started.set()
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            cancelled.append(ctx.task_id)
            raise

    return mux, started, cancelled


async def test_cancel_a_running_task_cancels_its_handler_and_archives_it(
    url: str, peek: Peek
) -> None:
    mux, started, cancelled = blocking_mux()
    async with aqueue.Client(url) as client:
        info = await client.enqueue("block")
        async with Worker(mux, url):
            with anyio.fail_after(10):
                await started.wait()
            await client.cancel("default", info.id)
            await wait_for(lambda: _state(peek, info.id, "archived"))
    assert cancelled == [info.id]
    async with aqueue.Inspector(url) as inspector:
        task = await inspector.get_task("default", info.id)
    assert task.state == "archived"
    assert task.last_error == "cancelled"
    assert task.retried == 0  # never retried


async def test_a_cancel_missed_on_pub_sub_is_honoured_at_the_next_heartbeat(
    url: str, peek: Peek
) -> None:
    mux, started, cancelled = blocking_mux()
    async with aqueue.Client(url) as client:
        info = await client.enqueue("block")
    async with Worker(mux, url, lease_ttl=0.6):
        with anyio.fail_after(10):
            await started.wait()
        # The request as persisted, with no pub/sub message: as if the worker was
        # disconnected when it was published.
        await peek.r.sadd(peek.k + "cancels", info.id)
        await wait_for(lambda: _state(peek, info.id, "archived"))
    assert cancelled == [info.id]


async def test_cancel_a_waiting_task_archives_it_without_running(url: str, peek: Peek) -> None:
    mux = Mux()
    ran: list[str] = []

    @mux.task("never")
    async def never(ctx: Context) -> None:
        ran.append(ctx.task_id)

    async with aqueue.Client(url) as client:
        pending = await client.enqueue(never, unique=3600)
        scheduled = await client.enqueue(never, process_in=0.3)
        inspector = aqueue.Inspector(url)
        await inspector.cancel("default", pending.id)
        await inspector.cancel("default", scheduled.id)
        await client.enqueue(never, unique=3600)  # the unique lock went with it
        await anyio.sleep(0.4)  # past the scheduled time: it must still not run
        await drain(mux, url)
        for info in (pending, scheduled):
            task = await inspector.get_task("default", info.id)
            assert (task.state, task.last_error) == ("archived", "cancelled")
        await inspector.close()
    assert pending.id not in ran
    assert scheduled.id not in ran


async def test_cancel_a_task_in_retry_archives_it(url: str, peek: Peek) -> None:
    mux = Mux()

    @mux.task("fails")
    async def fails(ctx: Context) -> None:
        raise RuntimeError("nope")

    async with aqueue.Client(url) as client:
        info = await client.enqueue(fails)
        async with Worker(mux, url, retry_delay=lambda n, e, t: 60):
            await wait_for(lambda: _state(peek, info.id, "retry"))
        await client.cancel("default", info.id)
    assert await peek.state(info.id) == "archived"
    assert await peek.r.zscore(peek.k + "retry", info.id) is None


async def test_cancel_or_get_an_unknown_task_raises_task_not_found(url: str) -> None:
    async with aqueue.Inspector(url) as inspector:
        with pytest.raises(aqueue.TaskNotFound, match="'nope'.*'default'"):
            await inspector.cancel("default", "nope")
        with pytest.raises(aqueue.TaskNotFound, match="'nope'"):
            await inspector.get_task("default", "nope")


async def test_get_task_shows_result_progress_and_times(url: str) -> None:
    mux = Mux()

    @mux.task("sum", retention=60)
    async def add(ctx: Context, numbers: list[int]) -> int:
        await ctx.progress({"done": len(numbers)})
        return sum(numbers)

    async with aqueue.Client(url) as client:
        info = await client.enqueue(add, [1, 2, 3], headers={"h": "1"})
    await drain(mux, url)
    async with aqueue.Inspector(url) as inspector:
        task = await inspector.get_task("default", info.id)
        assert await inspector.queues() == ["default"]
    assert task.state == "completed"
    assert task.result == 6
    assert task.progress == {"done": 3}
    assert task.payload == [1, 2, 3]
    assert task.headers == {"h": "1"}
    assert task.completed_at is not None
    assert task.enqueued_at is not None
    assert task.enqueued_at <= task.completed_at


async def test_durable_enqueue_waits_for_the_append_only_file(tmp_path: Path) -> None:
    with EmbeddedServer(appendonly=True, directory=tmp_path) as server:
        async with aqueue.Client(server.url, durable=True) as client:
            info = await client.enqueue("t", {"n": 1})
            infos = await client.enqueue_many([aqueue.Job("t", i) for i in range(10)])
        assert len(infos) == 10
        r = redis.Redis.from_url(server.url)
        assert r.hget("aq:{default}:states", info.id) == b"pending"
        r.close()


async def test_durable_enqueue_on_a_server_without_aof_says_so(aqueue_url: str) -> None:
    async with aqueue.Client(aqueue_url) as client:
        with pytest.raises(aqueue.AqueueError, match="appendonly off"):
            await client.enqueue("t", durable=True)


async def test_durable_enqueue_on_a_server_without_waitaof_says_so() -> None:
    url = REDIS7_URL
    try:
        version = str(redis.Redis.from_url(url).info("server")["redis_version"])
    except redis.RedisError:
        pytest.skip("no Redis at 127.0.0.1:6379")
    if tuple(int(x) for x in version.split(".")[:2]) >= (7, 2):
        pytest.skip(f"Redis {version} has WAITAOF")
    async with aqueue.Client(url) as client:
        with pytest.raises(aqueue.AqueueError, match="does not support WAITAOF"):
            await client.enqueue("t", durable=True)
    redis.Redis.from_url(url).flushdb()


async def _state(peek: Peek, task_id: str, state: str) -> bool:
    return await peek.state(task_id) == state
