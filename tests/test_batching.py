"""Automatic pipelining (aqueue/_redis/batcher.py): concurrent calls of one event-loop
turn share one write, and each caller gets exactly its own replies, whatever happens
to the others: interleaved callers, error replies in the middle of a batch, callers
cancelled before and after their batch is written, a connection lost mid-batch; on
Valkey, Redis 7, the cluster (per node) and Sentinel. The Client goes one step further
and writes concurrent ``enqueue`` calls as one ``enqueue_many``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
import redis.exceptions as rexc

import aqueue
from aqueue._redis.broker import Broker

from .helpers import araw_client, wait_for
from .test_sentinel import SentinelSet

pytestmark = pytest.mark.anyio

CALLERS = 300


@pytest.fixture
async def broker(url: str) -> AsyncIterator[Broker]:
    b = Broker(url)
    try:
        yield b
    finally:
        await b.close()


def key(i: int) -> str:
    """Keys on every master of the cluster (a hash tag each)."""
    return f"batch:{{{i}}}"


def hincr(b: Broker, i: int, by: int) -> Callable[[], Awaitable[list[Any]]]:
    """A call on the hot path's raw commands: its replies tell whose they are."""
    return lambda: b.scripts([], [("HINCRBY", key(i), "f", by), ("HINCRBY", key(i), "g", -by)])


def hmget(b: Broker, i: int) -> Callable[[], Awaitable[list[Any]]]:
    """A call redis-py parses (not a raw command): the other batch."""
    return lambda: b.scripts([], [("HMGET", key(i), "name")])


async def interleaved(b: Broker) -> None:
    for i in range(CALLERS):
        await b.run(lambda i=i: b.redis.hset(key(i), "name", f"n{i}"))  # type: ignore[misc]
    batches = sum(x.batches for x in b._autopipeline.batchers.values())

    async def one(i: int) -> tuple[int, Any]:
        if i % 3 == 0:
            return i, await b.run(hmget(b, i))
        return i, await b.run(hincr(b, i, i + 1))

    replies = await asyncio.gather(*(one(i) for i in range(CALLERS)))
    for i, reply in replies:
        if i % 3 == 0:
            assert reply == [[f"n{i}".encode()]]
        else:
            assert reply == [i + 1, -(i + 1)]
    # They did share trips (one per turn and kind, not one each).
    assert sum(x.batches for x in b._autopipeline.batchers.values()) - batches in range(1, 5)


async def test_interleaved_callers_each_get_their_own_replies(broker: Broker) -> None:
    await interleaved(broker)


async def test_an_error_reply_in_the_middle_of_a_batch_is_its_callers_alone(
    broker: Broker,
) -> None:
    b = broker
    for i in range(0, CALLERS, 10):
        await b.run(lambda i=i: b.redis.set(key(i), "a string"))  # type: ignore[misc]

    async def one(i: int) -> Any:
        try:
            return await b.run(hincr(b, i, 1))
        except rexc.ResponseError as exc:
            return exc

    replies = await asyncio.gather(*(one(i) for i in range(CALLERS)))
    for i, reply in enumerate(replies):
        if i % 10 == 0:
            assert isinstance(reply, rexc.ResponseError) and "WRONGTYPE" in str(reply), reply
        else:
            assert reply == [1, -1]


async def test_a_caller_cancelled_before_its_batch_is_written_sends_nothing(
    aqueue_url: str,
) -> None:
    async with aqueue.Client(aqueue_url) as client:
        b = client._broker
        await b.run(lambda: b.redis.ping())
        tasks = [asyncio.create_task(b.run(hincr(b, i, 1))) for i in range(10)]
        raw = b._autopipeline.batchers[True]
        # Every task reaches the batcher in the next turn: the first goes out at once,
        # the other nine wait for the turn's end.
        for _ in range(3):
            await asyncio.sleep(0)  # one turn each
            if len(raw._waiting) == 9:
                break
        assert len(raw._waiting) == 9
        tasks[5].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[5], asyncio.CancelledError)
        assert [d for i, d in enumerate(done) if i != 5] == [[1, -1]] * 9
        assert await b.run(lambda: b.redis.hget(key(5), "f")) is None  # never sent


async def test_a_caller_cancelled_after_its_batch_is_written_gets_nothing_of_anyone(
    aqueue_url: str,
) -> None:
    """The server holds the batch's replies (CLIENT PAUSE); two callers give up; the
    others get their own replies, and the connection stays in step for the next."""
    async with aqueue.Client(aqueue_url) as client, araw_client(aqueue_url) as admin:
        b = client._broker
        await b.run(lambda: b.redis.ping())
        raw = b._autopipeline.batchers[True]
        await admin.execute_command("CLIENT", "PAUSE", 600, "WRITE")  # type: ignore[no-untyped-call]
        before = raw.batches
        tasks = [asyncio.create_task(b.run(hincr(b, i, i + 1))) for i in range(10)]
        await wait_for(lambda: raw.batches > before, timeout=5)
        await asyncio.sleep(0.1)  # the batch is on the wire, its replies held
        tasks[3].cancel()
        tasks[6].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        for i, d in enumerate(done):
            if i in (3, 6):
                assert isinstance(d, asyncio.CancelledError)
            else:
                assert d == [i + 1, -(i + 1)]
        # Written before they gave up, the cancelled calls ran.
        assert await admin.hget(key(3), "f") == b"4"
        for i in range(20):  # the connections are in step: each reply is its caller's
            assert await b.run(hincr(b, 100 + i, i + 1)) == [i + 1, -(i + 1)]


async def test_a_connection_lost_mid_batch_fails_exactly_its_calls(aqueue_url: str) -> None:
    async with aqueue.Client(aqueue_url) as client, araw_client(aqueue_url) as admin:
        b = client._broker
        await b.run(lambda: b.redis.ping())
        raw = b._autopipeline.batchers[True]
        await admin.client_setname("admin")
        await admin.execute_command("CLIENT", "PAUSE", 2000, "WRITE")  # type: ignore[no-untyped-call]
        before = raw.batches
        tasks = [asyncio.create_task(b.run(hincr(b, i, 1))) for i in range(10)]
        await wait_for(lambda: raw.batches > before, timeout=5)
        await asyncio.sleep(0.1)
        ids = [c["id"] for c in await admin.client_list() if c["name"] != "admin"]
        for cid in ids:
            await admin.client_kill_filter(_id=cid)
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(d, aqueue.BrokerUnavailable) for d in done), done
        await admin.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]
        assert await b.run(hincr(b, 500, 7)) == [7, -7]  # new connections, in step


async def test_sentinel_batches_too() -> None:
    s = SentinelSet()
    try:
        await wait_for(s.ready, timeout=15)
        b = Broker(s.url)
        try:
            await interleaved(b)
        finally:
            await b.close()
    finally:
        s.close()


# -- the Client: concurrent enqueue calls as one enqueue_many ---------------------------


class Item(msgspec.Struct):
    n: int


async def test_concurrent_enqueues_are_written_together_each_caller_its_own(url: str) -> None:
    """Each caller gets the TaskInfo of its own task (the stored payload says so), a
    refused one its own error, whatever the queue; and the calls shared trips."""
    async with aqueue.Client(url) as client:
        first = await client.enqueue("batch:item", Item(n=-1), unique=3600)

        async def one(i: int) -> Any:
            options: dict[str, Any] = {"queue": ("default", "images", "reports")[i % 3]}
            if i == 7:
                # The same unique task as `first`: refused, as it would be alone.
                return await _caught(client.enqueue("batch:item", Item(n=-1), unique=3600))
            if i == 9:
                options["task_id"] = first.id
                options["queue"] = "default"
            return await _caught(client.enqueue("batch:item", Item(n=i), **options))

        before = client._enqueues.batches
        results = await asyncio.gather(*(one(i) for i in range(CALLERS)))
        assert client._enqueues.batches > before
        assert isinstance(results[7], aqueue.DuplicateTask)
        assert isinstance(results[9], aqueue.TaskIdConflict)
        async with aqueue.Inspector(url) as inspector:
            for i, info in enumerate(results):
                if i in (7, 9):
                    continue
                assert isinstance(info, aqueue.TaskInfo)
                stored = await inspector.get_task(info.queue, info.id)
                assert msgspec.json.decode(msgspec.json.encode(stored.payload)) == {"n": i}
                assert info.queue == ("default", "images", "reports")[i % 3]
        assert len({r.id for r in results if isinstance(r, aqueue.TaskInfo)}) == CALLERS - 2


async def _caught(call: Awaitable[aqueue.TaskInfo]) -> aqueue.TaskInfo | aqueue.AqueueError:
    try:
        return await call
    except aqueue.AqueueError as exc:
        return exc


async def test_concurrent_enqueues_on_a_lost_connection_each_say_unavailable(
    aqueue_url: str,
) -> None:
    async with aqueue.Client(aqueue_url) as client, araw_client(aqueue_url) as admin:
        await client.enqueue("batch:item", Item(n=-1))
        await admin.client_setname("admin")
        await admin.execute_command("CLIENT", "PAUSE", 2000, "WRITE")  # type: ignore[no-untyped-call]
        before = client._enqueues.batches
        tasks = [asyncio.create_task(client.enqueue("batch:item", Item(n=i))) for i in range(20)]
        await wait_for(lambda: client._enqueues.batches > before, timeout=5)
        await asyncio.sleep(0.1)
        for c in await admin.client_list():
            if c["name"] != "admin":
                await admin.client_kill_filter(_id=c["id"])
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(d, aqueue.BrokerUnavailable) for d in done), done
        await admin.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]
        assert (await client.enqueue("batch:item", Item(n=99))).state == "pending"


async def test_a_call_left_alone_at_the_turns_end_goes_alone(aqueue_url: str) -> None:
    """Two calls of one turn: the first goes out at once, the second waits for the
    turn's end, and finding itself alone then, goes the way the first did (no batch)."""
    async with aqueue.Client(aqueue_url) as client:
        b = client._broker
        await b.run(lambda: b.redis.ping())
        raw = b._autopipeline.batchers[True]
        before = raw.batches
        both = await asyncio.gather(b.run(hincr(b, 1, 1)), b.run(hincr(b, 2, 2)))
        assert list(both) == [[1, -1], [2, -2]]
        assert raw.batches == before
        enqueued = client._enqueues.batches
        first, second = await asyncio.gather(
            client.enqueue("batch:item", Item(n=1)), client.enqueue("batch:item", Item(n=2))
        )
        assert client._enqueues.batches == enqueued
        async with aqueue.Inspector(aqueue_url) as inspector:
            for info, n in ((first, 1), (second, 2)):
                stored = await inspector.get_task(info.queue, info.id)
                assert msgspec.json.decode(msgspec.json.encode(stored.payload)) == {"n": n}


async def test_a_lone_waiting_call_cancelled_before_the_turns_end_sends_nothing(
    aqueue_url: str,
) -> None:
    async with aqueue.Client(aqueue_url) as client:
        await client.enqueue("batch:item", Item(n=0))
        first = asyncio.create_task(client.enqueue("batch:item", Item(n=1)))
        second = asyncio.create_task(client.enqueue("batch:item", Item(n=2), task_id="never"))
        for _ in range(3):
            await asyncio.sleep(0)  # one turn each
            if client._enqueues._waiting:
                break
        assert len(client._enqueues._waiting) == 1
        second.cancel()
        assert (await first).state == "pending"
        with pytest.raises(asyncio.CancelledError):
            await second
        async with aqueue.Inspector(aqueue_url) as inspector:
            with pytest.raises(aqueue.TaskNotFound):
                await inspector.get_task("default", "never")


async def test_enqueues_batch_on_their_own_not_through_the_brokers_batches(url: str) -> None:
    """The Client writes concurrent enqueue calls as one enqueue_many: sending that (or
    a lone call) waits for no other batch of the turn, even after another call of the
    Client's broker went out first in that turn."""
    async with aqueue.Client(url) as client:
        b = client._broker
        await client.enqueue("batch:item", Item(n=-1))
        batchers = b._autopipeline.batchers.values()
        before = [x.batches for x in batchers]
        enqueued = client._enqueues.batches
        counted, *infos = await asyncio.gather(
            b.run(hincr(b, 1, 1)), *(client.enqueue("batch:item", Item(n=i)) for i in range(50))
        )
        assert counted == [1, -1]
        assert len({info.id for info in infos}) == 50
        assert client._enqueues.batches > enqueued
        assert [x.batches for x in batchers] == before


# -- what one enqueue makes once and keeps ----------------------------------------------


async def test_options_merged_once_are_still_checked_at_each_call(aqueue_url: str) -> None:
    """A set of options is checked and merged once and kept: an equal value of another
    type (True for 1) is checked anew, a task id at each call, and options that differ
    from call to call are merged at each call."""
    async with aqueue.Client(aqueue_url) as client:
        for _ in range(2):
            info = await client.enqueue("batch:item", Item(n=1), queue="images", max_retry=1)
            assert (info.queue, info.max_retry) == ("images", 1)
        with pytest.raises(aqueue.InvalidOption, match="True"):
            await client.enqueue("batch:item", Item(n=1), queue="images", max_retry=True)
        with pytest.raises(aqueue.InvalidOption, match="'a|b'"):
            await client.enqueue("batch:item", queue="images", max_retry=1, task_id="a|b")
        mine = await client.enqueue("batch:item", queue="images", max_retry=1, task_id="mine")
        assert (mine.id, mine.queue, mine.max_retry) == ("mine", "images", 1)
        later = await client.enqueue("batch:item", queue="images", process_in=3600)
        sooner = await client.enqueue("batch:item", queue="images", process_in=60)
        assert later.next_process_at is not None and sooner.next_process_at is not None
        assert sooner.next_process_at < later.next_process_at


async def test_the_returned_task_is_the_callers_own(aqueue_url: str) -> None:
    """Handler options are merged once per handler: the headers of one returned task are
    its own to change, and the next task still gets the handler's."""
    mux = aqueue.Mux()

    @mux.task("batch:headed", headers={"source": "web"})
    async def headed(ctx: aqueue.Context) -> None:
        """Never run."""

    async with aqueue.Client(aqueue_url) as client:
        first = await client.enqueue(headed)
        first.headers["source"] = "changed"
        assert (await client.enqueue(headed)).headers == {"source": "web"}
        assert first.enqueued_at is not None and first.enqueued_at.tzinfo is not None
