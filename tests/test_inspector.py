"""The Inspector: every method on real servers (Valkey 9 and Redis 7)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import msgspec
import pytest

import aqueue
from aqueue import Context, Inspector, Job, Mux, QueueInfo, Worker
from aqueue import _inspector as inspector_module
from aqueue._codec import decode_message, encode_message
from aqueue._redis.keys import done_channel, queue_keys
from aqueue.server import EmbeddedServer
from aqueue.testing import drain

from .helpers import Peek, araw_client, wait_for

pytestmark = pytest.mark.anyio

# Every per-task hash the engine writes: a deleted task must leave nothing in any.
TASK_HASHES = ("tasks", "states", "retried", "errors", "failed_at", "results", "progress")


@pytest.fixture
async def inspector(url: str) -> AsyncIterator[Inspector]:
    async with aqueue.Inspector(url) as i:
        yield i


@pytest.fixture
async def client(url: str) -> AsyncIterator[aqueue.Client]:
    # Completed tasks are kept, so that tests can look at them.
    async with aqueue.Client(url, defaults={"retention": 600}) as c:
        yield c


@pytest.fixture
async def peek(url: str) -> AsyncIterator[Peek]:
    p = Peek(url)
    yield p
    await p.close()


@dataclass
class App:
    """Handlers whose tasks end in a known state: ok -> completed (result kept),
    skip -> archived, flaky -> retry (an hour away), block -> active until cancelled."""

    mux: Mux = field(default_factory=Mux)
    started: anyio.Event = field(default_factory=anyio.Event)
    ran: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


def make_app() -> App:
    app = App()

    @app.mux.task("ok")
    async def ok(ctx: Context, n: int) -> int:
        app.ran.append(ctx.task_id)
        return n * 2

    @app.mux.task("skip")
    async def skip(ctx: Context) -> None:
        raise aqueue.SkipRetry("bad input")

    @app.mux.task("flaky")
    async def flaky(ctx: Context) -> None:
        raise RuntimeError("boom")

    @app.mux.task("block")
    async def block(ctx: Context) -> None:
        app.started.set()
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            app.cancelled.append(ctx.task_id)
            raise

    return app


def an_hour(n: int, exc: BaseException, task: aqueue.TaskInfo) -> float:
    return 3600.0


@dataclass
class Populated:
    ok: str
    skip: str
    flaky: str
    block: str
    pending: list[str]
    scheduled: str
    worker: Worker


@asynccontextmanager
async def one_task_per_state(url: str, client: aqueue.Client) -> AsyncIterator[Populated]:
    """Queue "default" with tasks completed, archived, retry and active (a worker keeps
    running the active one), then paused, with two pending and one scheduled."""
    app = make_app()
    inspector = aqueue.Inspector(url)
    infos = await client.enqueue_many([Job("ok", 21), Job("skip"), Job("flaky"), Job("block")])
    ok, skip, flaky, block = (i.id for i in infos)
    try:
        async with Worker(app.mux, url, retry_delay=an_hour) as worker:
            expected = {ok: "completed", skip: "archived", flaky: "retry", block: "active"}

            async def settled() -> bool:
                got = {i: (await inspector.get_task("default", i)).state for i in expected}
                return got == expected

            await wait_for(settled)
            await inspector.pause("default")
            pending = [(await client.enqueue("ok", n)).id for n in (1, 2)]
            scheduled = (await client.enqueue("ok", 3, process_in=3600)).id
            yield Populated(ok, skip, flaky, block, pending, scheduled, worker)
            await inspector.cancel("default", block)
    finally:
        await inspector.close()


# -- queues, queue_info, history ---------------------------------------------------------


async def test_queues_lists_every_queue_used_sorted(
    client: aqueue.Client, inspector: Inspector
) -> None:
    assert await inspector.queues() == []
    await client.enqueue("t", queue="b")
    await client.enqueue("t", queue="a")
    assert await inspector.queues() == ["a", "b"]


async def test_queue_info_counts_every_state_and_today_s_attempts(
    url: str, client: aqueue.Client, inspector: Inspector
) -> None:
    async with one_task_per_state(url, client):
        expected = QueueInfo(
            queue="default", pending=2, active=1, scheduled=1, retry=1, archived=1,
            completed=1, paused=True, processed=3, failed=2, processed_total=3,
            failed_total=2,
        )  # fmt: skip
        seen: list[QueueInfo] = []

        async def matches() -> bool:
            # A paused worker's blocking claim may hold a pending id for a moment.
            info = await inspector.queue_info("default")
            seen.append(info)
            return msgspec.structs.replace(info, latency=0.0, memory_bytes=0) == expected

        await wait_for(matches)
    info = seen[-1]
    assert 0 <= info.latency < 10
    assert info.memory_bytes > 0


async def test_latency_is_the_age_of_the_next_pending_task(
    client: aqueue.Client, inspector: Inspector
) -> None:
    first = await client.enqueue("t", 1)
    await client.enqueue("t", 2)
    assert (await inspector.queue_info("default")).latency < 10
    # Make the first task, the next to run, a minute old.
    r = inspector.broker.redis
    k = queue_keys("aq", "default")
    stored = await r.hget(k.tasks, first.id)
    assert isinstance(stored, bytes)
    header, body = decode_message(stored)
    body.enqueued_at -= 60_000
    await r.hset(k.tasks, first.id, encode_message(header.max_retry, header.digest, body))
    assert 60 <= (await inspector.queue_info("default")).latency < 70
    await inspector.delete_task("default", first.id)
    assert (await inspector.queue_info("default")).latency < 10


async def test_queue_info_of_an_unknown_queue_raises_queue_not_found(
    client: aqueue.Client, inspector: Inspector
) -> None:
    await client.enqueue("t", queue="known")
    with pytest.raises(aqueue.QueueNotFound, match=r"'nope'.*known"):
        await inspector.queue_info("nope")
    with pytest.raises(aqueue.InvalidQueueName, match="'no pe'"):
        await inspector.queue_info("no pe")


async def test_history_is_daily_newest_first_and_forgets_days_past_90(
    client: aqueue.Client, inspector: Inspector, peek: Peek
) -> None:
    await client.enqueue("t")
    today = datetime.now(UTC).date()
    day = [(today - timedelta(days=n)).isoformat() for n in range(100)]
    await peek.r.hset(
        peek.k + "stats",
        mapping={
            "p": 40, "f": 9, f"p:{day[0]}": 5, f"f:{day[0]}": 1, f"p:{day[2]}": 7,
            f"p:{day[89]}": 3, f"p:{day[90]}": 11, f"f:{day[99]}": 2,
        },
    )  # fmt: skip
    history = await inspector.history("default", 3)
    assert [(d.date, d.processed, d.failed) for d in history] == [
        (day[0], 5, 1),
        (day[1], 0, 0),
        (day[2], 7, 0),
    ]
    # Reading trimmed what is older than 90 days; day 89 is the 90th day kept.
    fields = set(await peek.r.hkeys(peek.k + "stats"))
    assert f"p:{day[89]}" in fields
    assert f"p:{day[90]}" not in fields
    assert f"f:{day[99]}" not in fields
    assert len(await inspector.history("default", 120)) == 120
    info = await inspector.queue_info("default")
    assert (info.processed, info.failed, info.processed_total, info.failed_total) == (5, 1, 40, 9)
    with pytest.raises(aqueue.AqueueError, match="days"):
        await inspector.history("default", 0)


async def test_queue_info_and_history_work_on_a_read_only_replica() -> None:
    # A primary of its own: no 5 s wait before it serves a new replica.
    with EmbeddedServer(extra=["--repl-diskless-sync-delay", "0"]) as primary:
        async with aqueue.Client(primary.url) as client:
            await client.enqueue("t")
        old_day = (datetime.now(UTC).date() - timedelta(days=200)).isoformat()
        peek = Peek(primary.url)
        try:
            # A counter the Inspector would trim, were the server writable.
            await peek.r.hset(peek.k + "stats", f"p:{old_day}", 1)
        finally:
            await peek.close()
        replica_of = ["--replicaof", "127.0.0.1", str(primary.port)]
        with EmbeddedServer(extra=replica_of) as replica:
            async with aqueue.Inspector(replica.url) as inspector:

                async def synced() -> bool:
                    return "default" in await inspector.queues()

                await wait_for(synced)
                assert (await inspector.queue_info("default")).pending == 1
                assert len(await inspector.history("default", 3)) == 3


# -- list_tasks ----------------------------------------------------------------------------


async def test_list_pending_tasks_in_queue_order_page_by_page(
    client: aqueue.Client, inspector: Inspector
) -> None:
    await client.enqueue_many([Job("t", n) for n in range(7)])

    async def page(n: int) -> list[int]:
        return [t.payload for t in await inspector.list_tasks("default", "pending", n, 3)]

    assert [await page(n) for n in (1, 2, 3, 4)] == [[0, 1, 2], [3, 4, 5], [6], []]
    everything = await inspector.list_tasks("default", aqueue.State.PENDING)
    assert [t.payload for t in everything] == list(range(7))
    assert all(t.state == "pending" and t.type == "t" for t in everything)


async def test_list_scheduled_soonest_first_and_archived_most_recent_first(
    client: aqueue.Client, inspector: Inspector
) -> None:
    for n, delay in enumerate((300, 100, 200)):
        await client.enqueue("t", n, process_in=delay)
    scheduled = await inspector.list_tasks("default", "scheduled")
    assert [t.payload for t in scheduled] == [1, 2, 0]
    assert all(t.next_process_at is not None for t in scheduled)
    for name in ("a", "b", "c"):
        await client.enqueue("t", task_id=name)
        await inspector.archive_task("default", name)
    archived = await inspector.list_tasks("default", "archived")
    assert [t.id for t in archived] == ["c", "b", "a"]
    assert [t.id for t in await inspector.list_tasks("default", "archived", 2, 2)] == ["a"]


async def test_list_tasks_in_every_state(
    url: str, client: aqueue.Client, inspector: Inspector
) -> None:
    async with one_task_per_state(url, client) as p:

        async def ids(state: str) -> list[str]:
            return [t.id for t in await inspector.list_tasks("default", state)]

        assert await ids("completed") == [p.ok]
        assert await ids("archived") == [p.skip]
        assert await ids("retry") == [p.flaky]
        assert await ids("active") == [p.block]
        assert await ids("scheduled") == [p.scheduled]

        async def pending_listed() -> bool:
            # A paused worker's blocking claim may hold a pending id for a moment.
            return await ids("pending") == p.pending

        await wait_for(pending_listed)
        (done,) = await inspector.list_tasks("default", "completed")
        assert (done.result, done.completed_at is not None) == (42, True)
        (failing,) = await inspector.list_tasks("default", "retry")
        assert failing.last_error == "RuntimeError: boom"
        assert failing.retried == 1
        assert await inspector.list_tasks("default", "active", page=2) == []


async def test_list_tasks_refuses_bad_arguments(
    client: aqueue.Client, inspector: Inspector
) -> None:
    await client.enqueue("t")
    with pytest.raises(aqueue.AqueueError, match="'done'"):
        await inspector.list_tasks("default", "done")
    with pytest.raises(aqueue.AqueueError, match="page"):
        await inspector.list_tasks("default", "pending", page=0)
    with pytest.raises(aqueue.AqueueError, match="size"):
        await inspector.list_tasks("default", "pending", size=0)
    with pytest.raises(aqueue.QueueNotFound, match="'other'"):
        await inspector.list_tasks("other", "pending")
    with pytest.raises(aqueue.InvalidQueueName):
        await inspector.list_tasks("", "pending")


# -- per task: run, archive, delete --------------------------------------------------------


async def test_run_task_moves_scheduled_and_archived_tasks_to_pending(
    url: str, client: aqueue.Client, inspector: Inspector
) -> None:
    app = make_app()
    later = await client.enqueue("ok", 1, process_in=3600)
    dead = await client.enqueue("ok", 2)
    await inspector.archive_task("default", dead.id)
    await inspector.run_task("default", later.id)
    await inspector.run_task("default", dead.id)
    for info in (later, dead):
        task = await inspector.get_task("default", info.id)
        assert (task.state, task.next_process_at) == ("pending", None)
    await drain(app.mux, url)
    assert sorted(app.ran) == sorted([later.id, dead.id])


async def test_run_task_refuses_a_pending_task_and_an_unknown_one(
    client: aqueue.Client, inspector: Inspector
) -> None:
    info = await client.enqueue("t")
    with pytest.raises(aqueue.AqueueError, match="it is pending"):
        await inspector.run_task("default", info.id)
    with pytest.raises(aqueue.TaskNotFound, match="'nope'"):
        await inspector.run_task("default", "nope")


async def test_archive_task_archives_without_running_and_releases_the_unique_lock(
    url: str, client: aqueue.Client, inspector: Inspector, peek: Peek
) -> None:
    app = make_app()
    waiting = await client.enqueue("ok", 1, unique=3600)
    later = await client.enqueue("ok", 2, process_in=3600)
    await inspector.archive_task("default", waiting.id)
    await inspector.archive_task("default", later.id)
    assert await peek.pending() == []
    for info in (waiting, later):
        task = await inspector.get_task("default", info.id)
        assert (task.state, task.last_error) == ("archived", None)
    again = await client.enqueue("ok", 1, unique=3600)  # the lock went with the archive
    await drain(app.mux, url)
    assert app.ran == [again.id]
    with pytest.raises(aqueue.AqueueError, match="it is archived"):
        await inspector.archive_task("default", waiting.id)
    with pytest.raises(aqueue.TaskNotFound):
        await inspector.archive_task("default", "nope")


async def test_an_active_task_can_be_neither_archived_nor_deleted(
    url: str, client: aqueue.Client, inspector: Inspector
) -> None:
    app = make_app()
    info = await client.enqueue("block")
    async with Worker(app.mux, url):
        with anyio.fail_after(10):
            await app.started.wait()
        with pytest.raises(aqueue.AqueueError, match="it is active.*cancel"):
            await inspector.archive_task("default", info.id)
        with pytest.raises(aqueue.AqueueError, match="it is active.*cancel"):
            await inspector.delete_task("default", info.id)
        assert (await inspector.get_task("default", info.id)).state == "active"
        await inspector.cancel("default", info.id)


async def test_delete_task_removes_everything_stored_about_it(
    url: str, client: aqueue.Client, inspector: Inspector, peek: Peek
) -> None:
    app = make_app()
    done = await client.enqueue("ok", 1, unique=3600)
    await drain(app.mux, url)
    failed = await client.enqueue("skip")
    await drain(app.mux, url)
    waiting = await client.enqueue("ok", 2, unique=3600)
    for info in (done, failed, waiting):
        await inspector.delete_task("default", info.id)
        with pytest.raises(aqueue.TaskNotFound):
            await inspector.get_task("default", info.id)
    for h in TASK_HASHES:
        assert await peek.r.hlen(peek.k + h) == 0, h
    for z in ("completed", "archived", "scheduled", "retry"):
        assert await peek.r.zcard(peek.k + z) == 0, z
    assert await peek.pending() == []
    assert await peek.r.hlen(peek.k + "uniq") == 0
    await client.enqueue("ok", 2, unique=3600)  # no lock left behind
    with pytest.raises(aqueue.TaskNotFound, match="'nope'"):
        await inspector.delete_task("default", "nope")


async def test_archiving_or_deleting_a_task_wakes_whoever_waits_for_its_result(
    url: str, client: aqueue.Client, inspector: Inspector
) -> None:
    archived = await client.enqueue("ok", 1, retention=60)
    deleted = await client.enqueue("ok", 2, retention=60)
    outcomes: dict[str, BaseException] = {}

    async def wait(task_id: str) -> None:
        try:
            await client.result(task_id, timeout=10)
        except aqueue.AqueueError as exc:
            outcomes[task_id] = exc

    r = araw_client(url)  # on a cluster, counts the subscribers of every node

    async def subscribed() -> bool:
        ((_, n),) = await r.pubsub_numsub(done_channel("aq", "default"))
        return int(n) == 2

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, archived.id)
            tg.start_soon(wait, deleted.id)
            await wait_for(subscribed)
            acted = time.monotonic()
            await inspector.archive_task("default", archived.id)
            await inspector.delete_task("default", deleted.id)
    finally:
        await r.aclose()
    # Woken by the notices, well before the waiters' own 5 s re-check.
    assert time.monotonic() - acted < 3
    assert isinstance(outcomes[archived.id], aqueue.TaskFailed)
    assert isinstance(outcomes[deleted.id], aqueue.TaskNotFound)


# -- pause, resume, delete_queue -----------------------------------------------------------


async def test_pause_and_resume_a_queue_with_no_tasks_yet(inspector: Inspector) -> None:
    await inspector.pause("fresh")
    assert await inspector.queues() == ["fresh"]
    assert (await inspector.queue_info("fresh")).paused
    await inspector.resume("fresh")
    assert not (await inspector.queue_info("fresh")).paused


async def test_workers_claim_nothing_from_a_paused_queue_until_it_is_resumed(
    url: str, client: aqueue.Client, inspector: Inspector
) -> None:
    app = make_app()
    await inspector.pause("held")
    held = await client.enqueue("ok", 1, queue="held")
    async with Worker(app.mux, url, queues=["held", "free"]):
        free = await client.enqueue("ok", 2, queue="free")
        await wait_for(lambda: free.id in app.ran)
        assert held.id not in app.ran
        assert (await inspector.get_task("held", held.id)).state == "pending"
        await inspector.resume("held")
        await wait_for(lambda: held.id in app.ran)


async def test_delete_queue_refuses_a_queue_with_tasks_unless_forced(
    url: str, client: aqueue.Client, inspector: Inspector, peek: Peek
) -> None:
    info = await client.enqueue("t", queue="doomed")
    await client.enqueue("t", queue="doomed", process_in=60)
    await client.enqueue("t", queue="kept")
    with pytest.raises(aqueue.QueueNotEmpty, match="'doomed'.*2 task"):
        await inspector.delete_queue("doomed")
    assert (await inspector.get_task("doomed", info.id)).state == "pending"
    await inspector.delete_queue("doomed", force=True)
    assert await inspector.queues() == ["kept"]
    assert [k async for k in peek.r.scan_iter(match="aq:{doomed}:*")] == []
    with pytest.raises(aqueue.QueueNotFound):
        await inspector.queue_info("doomed")
    with pytest.raises(aqueue.QueueNotFound):
        await inspector.delete_queue("doomed")
    assert (await inspector.queue_info("kept")).pending == 1


async def test_delete_queue_removes_an_empty_queue_without_force(
    url: str, client: aqueue.Client, inspector: Inspector
) -> None:
    app = make_app()
    await client.enqueue("ok", 1, queue="done", retention=0)  # gone once done
    await drain(app.mux, url, queues=["done"])
    await inspector.pause("done")
    await inspector.delete_queue("done")
    assert await inspector.queues() == []


async def test_delete_queue_with_force_while_a_task_runs(
    url: str, client: aqueue.Client, inspector: Inspector, peek: Peek
) -> None:
    app = make_app()
    await client.enqueue("block", queue="busy")
    async with Worker(app.mux, url, queues=["busy"], lease_ttl=1):
        with anyio.fail_after(10):
            await app.started.wait()
        with pytest.raises(aqueue.QueueNotEmpty):
            await inspector.delete_queue("busy")
        await inspector.delete_queue("busy", force=True)
        # The worker finds its lease on the queue gone at its next heartbeat: it cancels
        # the handler, and writes nothing back for the task.
        await wait_for(lambda: bool(app.cancelled))
    for name in ("states", "tasks", "pending", "archived", "retry"):
        assert not await peek.r.exists(f"aq:{{busy}}:{name}"), name


# -- bulk ----------------------------------------------------------------------------------


async def test_bulk_moves_return_how_many_moved_in_bounded_batches(
    url: str, client: aqueue.Client, inspector: Inspector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inspector_module, "BULK_BATCH", 4)
    moved_per_call: list[int] = []
    script = inspector.broker.script

    async def counting(*args: Any, **kwargs: Any) -> Any:
        reply = await script(*args, **kwargs)
        moved_per_call.append(int(reply[0]))
        return reply

    monkeypatch.setattr(inspector.broker, "script", counting)
    await client.enqueue_many([Job("t", n, unique=3600) for n in range(10)])
    await client.enqueue_many([Job("t", n, process_in=3600) for n in range(3)])
    assert await inspector.archive_all("default", "pending") == 10
    assert moved_per_call == [4, 4, 2]
    assert await inspector.archive_all("default", "scheduled") == 3
    assert (await inspector.queue_info("default")).archived == 13
    # Archived is final: the unique locks went.
    await client.enqueue("t", 0, unique=3600)
    assert await inspector.run_all("default", "archived") == 13
    info = await inspector.queue_info("default")
    assert (info.pending, info.archived) == (14, 0)
    assert await inspector.delete_all("default", "pending") == 14
    assert await inspector.delete_all("default", "pending") == 0
    info = await inspector.queue_info("default")
    assert (info.pending, info.scheduled, info.archived) == (0, 0, 0)


async def test_bulk_moves_handle_thousands_of_tasks(
    url: str, client: aqueue.Client, inspector: Inspector, peek: Peek
) -> None:
    await client.enqueue_many([Job("t", n) for n in range(2500)])
    started = time.monotonic()
    assert await inspector.archive_all("default", "pending") == 2500
    assert await inspector.delete_all("default", "archived") == 2500
    assert time.monotonic() - started < 10
    for h in TASK_HASHES:
        assert await peek.r.hlen(peek.k + h) == 0, h


async def test_bulk_moves_drop_stale_entries_instead_of_moving_them(
    client: aqueue.Client, inspector: Inspector, peek: Peek
) -> None:
    waiting = await client.enqueue("t")
    # Entries whose task is gone, or is in another state: left behind by a crash or an
    # old bug, they must not move (or duplicate) anything.
    await peek.r.zadd(peek.k + "archived", {"ghost": 1, waiting.id: 2})
    await peek.r.lpush(peek.k + "pending", "ghost")
    assert await inspector.run_all("default", "archived") == 0
    assert await peek.r.zcard(peek.k + "archived") == 0
    assert await peek.pending() == [waiting.id, "ghost"]
    assert await inspector.archive_all("default", "pending") == 1
    assert await peek.pending() == []
    assert [t.id for t in await inspector.list_tasks("default", "archived")] == [waiting.id]


async def test_bulk_moves_refuse_states_they_cannot_move(
    client: aqueue.Client, inspector: Inspector
) -> None:
    await client.enqueue("t")
    for call, state in (
        (inspector.run_all, "pending"),
        (inspector.run_all, "completed"),
        (inspector.archive_all, "archived"),
        (inspector.archive_all, "active"),
        (inspector.delete_all, "active"),
    ):
        with pytest.raises(aqueue.AqueueError, match=f"{state}"):
            await call("default", state)
    with pytest.raises(aqueue.AqueueError, match="'nope'"):
        await inspector.delete_all("default", "nope")
    with pytest.raises(aqueue.QueueNotFound):
        await inspector.delete_all("unknown", "pending")
    assert (await inspector.queue_info("default")).pending == 1


# -- workers -------------------------------------------------------------------------------


async def test_workers_shows_each_live_worker_and_its_active_tasks(
    url: str, client: aqueue.Client, inspector: Inspector
) -> None:
    app = make_app()
    before = datetime.now(UTC) - timedelta(seconds=1)
    info = await client.enqueue("block", queue="a")
    async with Worker(app.mux, url, queues={"a": 3, "b": 1}, concurrency=7) as worker:
        with anyio.fail_after(10):
            await app.started.wait()
        (seen,) = await inspector.workers()
        assert seen.id == worker.id
        assert (seen.host, seen.pid) == (socket.gethostname(), os.getpid())
        assert (seen.queues, seen.concurrency) == ({"a": 3, "b": 1}, 7)
        assert before <= seen.started_at <= datetime.now(UTC)
        assert [(t.id, t.state, t.queue, t.type) for t in seen.active] == [
            (info.id, "active", "a", "block")
        ]
        await inspector.cancel("a", info.id)
        await wait_for(lambda: _no_active(inspector))
    assert await inspector.workers() == []


async def test_a_worker_whose_registration_expired_is_not_listed(
    inspector: Inspector, peek: Peek
) -> None:
    now = int(time.time() * 1000)
    card = msgspec.msgpack.encode(
        {"id": "w1", "host": "h", "pid": 1, "queues": {"q": 1}, "concurrency": 1, "started_at": now}
    )
    await peek.r.zadd("aq:workers", {"w1": now - 1, "w2": now + 60_000})
    await peek.r.set("aq:worker:w1", card)
    # w1's registration expired (it died without a goodbye); w2 has no card left.
    assert await inspector.workers() == []
    await peek.r.zadd("aq:workers", {"w1": now + 60_000})
    assert [w.id for w in await inspector.workers()] == ["w1"]


# -- helpers -------------------------------------------------------------------------------


async def _no_active(inspector: Inspector) -> bool:
    return all(not w.active for w in await inspector.workers())
