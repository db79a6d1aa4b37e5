"""SyncClient: the Client for code without an event loop, against real servers.

Calls that need a running worker are made from a worker thread of the test's event
loop (``anyio.to_thread``), as a Django view runs in a thread of its server while the
worker runs elsewhere.
"""

from __future__ import annotations

import gc
import inspect
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import pytest
import redis

import aqueue
from aqueue import Context, Mux, Worker

from .helpers import raw_client, text, wait_for

mux = Mux()


class Order(msgspec.Struct):
    sku: str
    qty: int


@mux.task("order:total", retention=60)
async def total(ctx: Context, order: Order) -> int:
    return order.qty * 10


@mux.task("order:refuse", retention=60, max_retry=0)
async def refuse(ctx: Context, order: Order) -> None:
    raise ValueError(f"no stock of {order.sku}")


# Nothing listens there: connecting is refused at once.
DEAD_URL = "redis://127.0.0.1:1/0"
THREAD_PREFIX = "aqueue-sync-client"


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


@pytest.fixture
def sync(url: str) -> Iterator[aqueue.SyncClient]:
    with aqueue.SyncClient(url) as client:
        yield client


def test_enqueue_from_many_threads_at_once(sync: aqueue.SyncClient, url: str) -> None:
    threads, each = 16, 25
    start = threading.Barrier(threads)

    def produce(n: int) -> list[str]:
        start.wait()  # every thread enqueues at the same time
        return [sync.enqueue(total, Order(f"sku-{n}-{i}", i)).id for i in range(each)]

    with ThreadPoolExecutor(threads) as pool:
        ids = [i for batch in pool.map(produce, range(threads)) for i in batch]
    assert len(set(ids)) == threads * each
    # One loop thread served them all, over one pool of connections.
    assert len([t for t in loop_threads() if t.is_alive()]) == 1
    r = raw_client(url)
    try:
        assert r.hlen("aq:{default}:states") == threads * each
    finally:
        r.close()


def test_enqueue_many_and_options_work_as_on_the_client(sync: aqueue.SyncClient) -> None:
    jobs = [aqueue.Job(total, Order("a", 1)), aqueue.Job("order:total", {"sku": "b", "qty": 2})]
    infos = sync.enqueue_many(jobs)
    assert [i.type for i in infos] == ["order:total", "order:total"]
    late = sync.enqueue(total, Order("c", 3), queue="later", process_in=60, task_id="c-3")
    assert (late.id, late.queue, late.state) == ("c-3", "later", "scheduled")
    again = sync.enqueue_many([aqueue.Job(total, Order("c", 3), queue="later", task_id="c-3")],
                              return_exceptions=True)  # fmt: skip
    assert isinstance(again[0], aqueue.TaskIdConflict)
    with pytest.raises(aqueue.TaskIdConflict):
        sync.enqueue(total, Order("c", 3), queue="later", task_id="c-3")
    sync.cancel("later", "c-3")
    with pytest.raises(aqueue.TaskNotFound):
        sync.cancel("later", "no-such-task")


@pytest.mark.anyio
async def test_result_waits_for_the_handler_and_raises_task_failed(url: str) -> None:
    with aqueue.SyncClient(url) as sync:
        async with Worker(mux, url):
            info = await anyio.to_thread.run_sync(lambda: sync.enqueue(total, Order("x", 4)))
            value = await anyio.to_thread.run_sync(lambda: sync.result(info, timeout=10))
            assert value == 40
            bad = await anyio.to_thread.run_sync(lambda: sync.enqueue(refuse, Order("y", 1)))
            with pytest.raises(aqueue.TaskFailed, match="no stock of y"):
                await anyio.to_thread.run_sync(lambda: sync.result(bad.id, timeout=10))
        nobody = await anyio.to_thread.run_sync(lambda: sync.enqueue(total, Order("z", 1)))
        with pytest.raises(aqueue.ResultTimeout, match=nobody.id):
            await anyio.to_thread.run_sync(lambda: sync.result(nobody, timeout=0.2))


def test_a_dead_server_raises_broker_unavailable_within_the_timeout() -> None:
    with aqueue.SyncClient(DEAD_URL, timeout=1.0) as sync:
        started = time.monotonic()
        with pytest.raises(aqueue.BrokerUnavailable, match="127.0.0.1:1"):
            sync.enqueue("order:total", {"sku": "a", "qty": 1})
        assert time.monotonic() - started < 3


def test_bad_input_raises_the_client_s_errors(aqueue_url: str) -> None:
    with pytest.raises(aqueue.InvalidOption, match="max_payload_bytes"):
        aqueue.SyncClient(aqueue_url, max_payload_bytes=0)
    with pytest.raises(aqueue.InvalidOption, match="URL"):
        aqueue.SyncClient("http://example.com/")
    with pytest.raises(aqueue.InvalidOption, match="takes a server URL"):
        aqueue.SyncClient(redis.asyncio.Redis())  # type: ignore[arg-type]
    with aqueue.SyncClient(aqueue_url, max_payload_bytes=100) as sync:
        with pytest.raises(aqueue.PayloadTooLarge):
            sync.enqueue("order:total", {"sku": "x" * 200, "qty": 1})
        with pytest.raises(aqueue.InvalidQueueName):
            sync.enqueue("order:total", {"sku": "a", "qty": 1}, queue="no spaces")


def test_construction_does_no_io_and_starts_no_thread() -> None:
    before = loop_threads()
    sync = aqueue.SyncClient(DEAD_URL)
    assert loop_threads() == before
    sync.close()  # closing what never started is fine


@pytest.mark.anyio
async def test_called_in_a_thread_running_an_event_loop_it_raises_and_points_to_client() -> None:
    before = loop_threads()
    sync = aqueue.SyncClient(DEAD_URL)
    for call in (
        lambda: sync.enqueue("order:total", {"sku": "a", "qty": 1}),
        lambda: sync.enqueue_many([]),
        lambda: sync.result("some-id"),
        lambda: sync.cancel("default", "some-id"),
    ):
        with pytest.raises(aqueue.AqueueError, match=r"running an event loop.*aqueue\.Client"):
            call()
    assert loop_threads() == before  # refused before anything started


def test_close_stops_the_thread_and_releases_the_connections(aqueue_url: str) -> None:
    r = redis.Redis.from_url(aqueue_url)

    def connections() -> int:
        return len(r.client_list()) - 1  # less this one

    try:
        baseline, others = connections(), loop_threads()
        with aqueue.SyncClient(aqueue_url) as sync:
            sync.enqueue(total, Order("a", 1))
            assert connections() > baseline
            (thread,) = set(loop_threads()) - set(others)
        assert not thread.is_alive()
        assert connections() == baseline
        # Closed is not dead: a later call starts afresh (as a Client reconnects).
        sync.enqueue(total, Order("b", 2))
        assert len(loop_threads()) == len(others) + 1
        del sync
        gc.collect()  # dropped without close(): its thread stops and its connections close
        assert loop_threads() == others
        assert connections() == baseline
    finally:
        r.close()


def test_close_while_a_call_waits_makes_that_call_raise(aqueue_url: str) -> None:
    sync = aqueue.SyncClient(aqueue_url)
    info = sync.enqueue(total, Order("a", 1))  # no worker: it stays pending
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            sync.result(info, timeout=None)
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    r = redis.Redis.from_url(aqueue_url)
    try:  # the waiter is subscribed: its call is in flight on the loop
        anyio.run(wait_for, lambda: r.pubsub_numsub("aq:{default}:done")[0][1] == 1)
    finally:
        r.close()
    sync.close()
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], aqueue.AqueueError)
    assert "closed while this call waited" in str(errors[0])


# Python 3.12+ warns on fork() in a process with threads (pytest-timeout's among them).
@pytest.mark.filterwarnings("ignore:.*fork\\(\\) may lead to deadlocks:DeprecationWarning")
def test_a_forked_child_gets_a_loop_of_its_own_and_the_parent_keeps_its_own(
    aqueue_url: str,
) -> None:
    sync = aqueue.SyncClient(aqueue_url)
    parent_task = sync.enqueue(total, Order("parent", 1))  # the loop thread is running now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read)
            child = sync.enqueue(total, Order("child", 2))
            again = sync.enqueue_many([aqueue.Job(total, Order("child", 3))])
            sync.close()
            os.write(write, f"{child.id} {again[0].id}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child's SyncClient call hung")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    with os.fdopen(read) as f:
        child_ids = f.read().split()
    # The parent's loop was left alone by the child: it still serves the parent.
    after = sync.enqueue(total, Order("parent", 4))
    sync.close()
    r = redis.Redis.from_url(aqueue_url)
    try:
        stored = {text(i) for i in r.hkeys("aq:{default}:states")}
    finally:
        r.close()
    assert stored == {parent_task.id, *child_ids, after.id}


def test_signatures_are_the_client_s() -> None:
    """The SyncClient mirrors the Client: an option or parameter added to one and not
    the other fails here."""

    def params(fn: object) -> list[tuple[str, Any, Any]]:
        sig = inspect.signature(fn)  # type: ignore[arg-type]
        return [(p.name, p.kind, p.default) for p in sig.parameters.values()][1:]

    assert params(aqueue.SyncClient.__init__)[1:] == params(aqueue.Client.__init__)[1:]
    for name in ("enqueue", "enqueue_many", "enqueue_flow", "flow", "result", "cancel"):
        assert params(getattr(aqueue.SyncClient, name)) == params(getattr(aqueue.Client, name))


def test_enqueue_flow_and_its_result_from_sync_code(aqueue_url: str) -> None:
    mux = aqueue.Mux()

    @mux.task("double")
    async def double(ctx: aqueue.Context, n: int) -> int:
        return n * 2

    async def serve(until: threading.Event) -> None:
        async with aqueue.Worker(mux, aqueue_url):
            await anyio.to_thread.run_sync(until.wait)

    stop = threading.Event()
    worker = threading.Thread(target=anyio.run, args=(serve, stop))
    worker.start()
    try:
        with aqueue.SyncClient(aqueue_url) as sync:
            info = sync.enqueue_flow(aqueue.chain(aqueue.Job("double", 3), aqueue.Job("double")))
            assert sync.result(info, timeout=20) == 12
            assert sync.flow(info.id).state == "completed"
    finally:
        stop.set()
        worker.join(timeout=20)
