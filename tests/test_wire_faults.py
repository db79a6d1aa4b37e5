"""aqueue's own connections (``aqueue/_redis/wire.py``) against real connection faults: a
server that restarts, connections the server kills or closes when idle, a server that
answers slowly or not at all. None of it depends on which redis-py is installed: these
connections are aqueue's own (see docs/architecture.md, "The wire path").

Every test runs on the asyncio event loop and on uvloop (what ``aqueue worker`` uses
when installed): the two hand a protocol different transport objects.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

import aqueue
from aqueue._redis import wire as _wire
from aqueue._redis.endpoint import endpoint
from aqueue._redis.scripts import SCRIPTS
from aqueue.server import EmbeddedServer, free_port

from .chaos.net_proxy import Proxy
from .helpers import wait_for

pytestmark = pytest.mark.anyio

# The bar: back to processing within 2 s of the server answering again.
BACK_WITHIN = 2.0
# "A handful": lost, back, and room for one reminder or a reaped lease.
MAX_OUTAGE_LINES = 4


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return "asyncio", {"use_uvloop": request.param == "uvloop"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A server that keeps its data across a SIGKILL (AOF, fsync always)."""
    s = EmbeddedServer(free_port(), appendonly=True, appendfsync="always", directory=tmp_path)
    s.start()
    try:
        yield s
    finally:
        if s.process is not None:
            s.process.send_signal(signal.SIGCONT)
        s.close()


async def restart(server: EmbeddedServer) -> float:
    """SIGKILL the server and start it again on the same port and data; the moment it
    answers again."""
    server.kill()
    await anyio.to_thread.run_sync(server.start)
    return time.monotonic()


async def client_count(url: str, name: str) -> int:
    r = aioredis.Redis.from_url(url)
    try:
        return sum(1 for c in await r.client_list() if c["name"] == name)
    finally:
        with anyio.CancelScope(shield=True):  # the watcher is cancelled mid-call
            await r.aclose()


class Recorder:
    """A mux whose one handler records the ids it ran."""

    def __init__(self) -> None:
        self.mux = aqueue.Mux()
        self.done: set[str] = set()

        @self.mux.task("rec")
        async def rec(ctx: aqueue.Context) -> None:
            self.done.add(ctx.task_id)

    async def ran(self, ids: list[str]) -> bool:
        return self.done.issuperset(ids)


async def enqueue(url: str, n: int) -> list[str]:
    async with aqueue.Client(url) as client:
        infos = await client.enqueue_many([aqueue.Job("rec") for _ in range(n)])
    return [i.id for i in infos]


@pytest.fixture
async def worker(server: EmbeddedServer) -> AsyncIterator[Recorder]:
    """A worker in this process, whose pool holds idle connections once it has run."""
    rec = Recorder()
    w = aqueue.Worker(rec.mux, server.url, concurrency=20, lease_ttl=3, timeout=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(w.run)
        ids = await enqueue(server.url, 200)
        await wait_for(lambda: rec.ran(ids), timeout=20)
        yield rec
        w.stop()


# What the worker says about its connection (docs/operations.md, "Server outages in
# the worker's log"); task-level warnings are not outage lines.
OUTAGE_WORDS = ("lost the server", "reachable", "flapping", "unreachable", "stable again",
                "waiting for the server")  # fmt: skip


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("aqueue")
        and r.levelno >= logging.WARNING
        and any(word in r.getMessage() for word in OUTAGE_WORDS)
    ]


async def test_worker_processes_again_soon_after_a_restarted_server_answers(
    server: EmbeddedServer, worker: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.clear()
    answering = await restart(server)
    ids = await enqueue(server.url, 20)
    await wait_for(lambda: worker.ran(ids), timeout=10)
    took = time.monotonic() - answering
    assert took < BACK_WITHIN, f"back to processing {took:.2f} s after the server answered"
    lines = outage_lines(caplog)
    assert len(lines) <= MAX_OUTAGE_LINES, lines


async def test_worker_rides_through_connections_killed_by_the_server(
    server: EmbeddedServer, worker: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.clear()
    r = aioredis.Redis.from_url(server.url)
    try:
        for _ in range(3):
            killed = await r.client_kill_filter(_type="normal", skipme=True)
            assert killed > 0
            ids = await enqueue(server.url, 20)
            await wait_for(lambda: worker.ran(ids), timeout=BACK_WITHIN * 2)  # noqa: B023
    finally:
        await r.aclose()
    lines = outage_lines(caplog)
    assert len(lines) <= 3 * 2, lines


@pytest.mark.parametrize("outcome", ["ack", "fail"])
async def test_an_outcome_whose_reply_was_lost_is_written_again_without_a_warning(
    outcome: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The server ran an ack (or a failure) but the connection dropped before its
    reply: the retried write finds the tasks no longer active (the lost try moved
    them on), and says so at INFO (one line per write), not in a warning per task."""
    caplog.set_level(logging.DEBUG, logger="aqueue")
    mux = aqueue.Mux()
    ran: set[str] = set()

    @mux.task("t")
    async def t(ctx: aqueue.Context) -> None:
        ran.add(ctx.task_id)
        if outcome == "fail":
            raise RuntimeError("boom")

    script = SCRIPTS.ack if outcome == "ack" else SCRIPTS.fail
    with EmbeddedServer() as server, anyio.fail_after(30):
        # Loaded beforehand: the reply to lose is the script's, not a NOSCRIPT refusal.
        r = aioredis.Redis.from_url(server.url)
        try:
            await r.script_load(script.source)
        finally:
            await r.aclose()
        async with (
            aqueue.Client(server.url) as client,
            aqueue.Inspector(server.url) as inspector,
            anyio.create_task_group() as tg,
        ):
            proxy = Proxy(server.port)
            await tg.start(proxy.serve)
            w = aqueue.Worker(mux, proxy.url, concurrency=20, lease_ttl=5, timeout=1)
            async with anyio.create_task_group() as worker_tg:
                worker_tg.start_soon(w.run)
                proxy.lose_reply(script.sha.encode())
                jobs = [aqueue.Job(t, retention=60) for _ in range(20)]
                infos = await client.enqueue_many(jobs)
                await wait_for(lambda: ran.issuperset(i.id for i in infos), timeout=10)
                await wait_for(lambda: any("discarded" in m for m in caplog.messages))
                state = "completed" if outcome == "ack" else "retry"
                for info in infos:
                    await wait_for(lambda: _state_is(inspector, info.id, state), timeout=10)  # noqa: B023
                w.stop()
            tg.cancel_scope.cancel()
    assert proxy.marker is None, "no reply was lost"
    late = [rec for rec in caplog.records if "discarded" in rec.getMessage()]
    assert late
    assert all(rec.levelno < logging.WARNING for rec in late), [x.getMessage() for x in late]


async def _state_is(inspector: aqueue.Inspector, task_id: str, state: str) -> bool:
    return (await inspector.get_task("default", task_id)).state == state


async def test_client_enqueues_at_once_after_its_idle_connections_were_killed(
    server: EmbeddedServer,
) -> None:
    async with aqueue.Client(server.url) as client, anyio.create_task_group() as tg:
        for _ in range(20):  # several connections in the pool, idle afterwards
            tg.start_soon(client.enqueue, "rec")
    async with aqueue.Client(server.url) as client:
        await client.enqueue("rec")
        r = aioredis.Redis.from_url(server.url)
        try:
            assert await r.client_kill_filter(_type="normal", skipme=True) > 0
        finally:
            await r.aclose()
        infos = [await client.enqueue("rec") for _ in range(20)]
    assert len({i.id for i in infos}) == 20


async def test_client_enqueues_at_once_after_a_restart_that_lost_all_data(
    tmp_path: Path,
) -> None:
    with EmbeddedServer(free_port()) as server:  # no persistence: scripts are gone too
        async with aqueue.Client(server.url) as client:
            await client.enqueue("rec")
            await restart(server)
            info = await client.enqueue("rec")
        r = aioredis.Redis.from_url(server.url)
        try:
            assert await r.hget("aq:{default}:states", info.id) == b"pending"
        finally:
            await r.aclose()


async def test_idle_connections_closed_by_the_server_timeout_are_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with EmbeddedServer(extra=["--timeout", "1"]) as server:
        rec = Recorder()
        w = aqueue.Worker(rec.mux, server.url + "?client_name=w", concurrency=4, timeout=1)
        async with anyio.create_task_group() as tg, aqueue.Client(server.url) as client:
            tg.start_soon(w.run)
            for _ in range(2):
                info = await client.enqueue("rec")
                await wait_for(lambda: rec.ran([info.id]), timeout=5)  # noqa: B023
                # Wait until the server has closed every connection idle for a second
                # (blocked claims and subscriptions are exempt from its timeout; one that
                # blocks again each second is never idle that long).
                idle = await _some_idle(server.url)
                await wait_for(lambda: _all_gone(server.url, idle), timeout=10)  # noqa: B023
            info = await client.enqueue("rec")
            await wait_for(lambda: rec.ran([info.id]), timeout=BACK_WITHIN)
            w.stop()
    assert outage_lines(caplog) == []


async def _clients(url: str) -> list[dict[str, Any]]:
    r = aioredis.Redis.from_url(url)
    try:
        return await r.client_list()
    finally:
        await r.aclose()


async def _some_idle(url: str) -> set[str]:
    """The connections idle for a second or more, once there are some (within 10 s)."""
    found: set[str] = set()

    async def some() -> bool:
        found.update(await _idle_ids(url))
        return bool(found)

    await wait_for(some, timeout=10)
    return found


async def _idle_ids(url: str) -> set[str]:
    """Connections idle for a second or more (the server closes them at its 1 s timeout)."""
    clients = await _clients(url)
    return {
        c["id"] for c in clients
        if c["flags"] == "N" and c["cmd"] != "client|list" and int(c["idle"]) >= 1
    }  # fmt: skip


async def _all_gone(url: str, ids: set[str]) -> bool:
    return not ids & {c["id"] for c in await _clients(url)}


async def test_a_late_reply_is_never_read_by_the_next_call(server: EmbeddedServer) -> None:
    assert server.process is not None
    async with aqueue.Client(server.url, timeout=0.5) as client:
        await client.enqueue("rec", task_id="warm")
        server.process.send_signal(signal.SIGSTOP)
        with pytest.raises(aqueue.BrokerUnavailable, match="did not answer within"):
            await client.enqueue("rec", task_id="x")
        server.process.send_signal(signal.SIGCONT)
        # The frozen call's enqueue ran once the server woke; its reply ("x is new")
        # must not be taken as the reply of this call, which conflicts with it.
        with pytest.raises(aqueue.TaskIdConflict):
            await client.enqueue("rec", task_id="x")
        assert (await client.enqueue("rec", task_id="y")).id == "y"


async def test_a_slow_answer_within_the_timeout_is_a_success(server: EmbeddedServer) -> None:
    assert server.process is not None
    async with aqueue.Client(server.url, timeout=5) as client:
        await client.enqueue("rec")
        server.process.send_signal(signal.SIGSTOP)
        done: list[aqueue.TaskInfo] = []

        async def one() -> None:
            done.append(await client.enqueue("rec"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            await anyio.sleep(0.3)  # the call is in flight, unanswered, this long
            assert done == []
            server.process.send_signal(signal.SIGCONT)
        assert len(done) == 1


async def test_pool_never_opens_more_than_its_size(server: EmbeddedServer) -> None:
    ep = endpoint(server.url + "?client_name=capped")
    assert ep is not None
    pool = _wire.LeanPool(ep, 3, 1.0)
    replies: list[Any] = []
    peak = 0

    async def push(i: int) -> None:
        # A short block keeps each connection busy long enough for calls to queue up.
        block = ("BLMOVE", "x", "y", "LEFT", "LEFT", 0.05)
        replies.extend(await _wire.call(pool, [("RPUSH", "k", i), block]))

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, await client_count(server.url, "capped"))
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        async with anyio.create_task_group() as calls:
            for i in range(30):
                calls.start_soon(push, i)
        tg.cancel_scope.cancel()
    await pool.disconnect()
    assert sorted(r for r in replies if r is not None) == list(range(1, 31))
    assert 1 <= peak <= 3


async def test_a_waiter_that_gives_up_hands_its_place_on(server: EmbeddedServer) -> None:
    ep = endpoint(server.url)
    assert ep is not None
    pool = _wire.LeanPool(ep, 1, 1.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_wire.call, pool, [("BLMOVE", "none", "x", "LEFT", "LEFT", 0.3)])
        await anyio.sleep(0.05)  # the one connection is busy blocking
        with anyio.move_on_after(0.05):
            await _wire.call(pool, [("LPUSH", "k", "given up")])
    with anyio.fail_after(2):
        assert await _wire.call(pool, [("LPUSH", "k", "served")]) == [1]
    await pool.disconnect()


async def test_url_login_database_and_client_name_are_honoured(tmp_path: Path) -> None:
    with EmbeddedServer(extra=["--requirepass", "s3cret"]) as server:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3?client_name=aq-test"
        async with aqueue.Client(url) as client:
            info = await client.enqueue("rec")
        r = aioredis.Redis.from_url(url)
        try:
            assert await r.hget("aq:{default}:states", info.id) == b"pending"
        finally:
            await r.aclose()
        bad = f"redis://:wrong@127.0.0.1:{server.port}/0"
        async with aqueue.Client(bad, timeout=2) as client:
            with pytest.raises(aqueue.BrokerUnavailable, match="WRONGPASS|invalid"):
                await client.enqueue("rec")


def test_a_database_that_is_not_a_number_is_refused_at_once() -> None:
    with pytest.raises(aqueue.AqueueError, match="'abc'"):
        aqueue.Client("redis://127.0.0.1:6379/abc")


async def test_an_option_only_redis_py_knows_takes_redis_pys_path(server: EmbeddedServer) -> None:
    url = server.url + "?socket_keepalive=true"
    assert endpoint(url) is None
    async with aqueue.Client(url) as client:
        info = await client.enqueue("rec")
    assert info.state == "pending"
