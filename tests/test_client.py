"""The client: enqueue semantics, option precedence, unique locks, task ids, URL forms."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import redis
import redis.asyncio as aioredis

import aqueue
from aqueue import Context, Job, Mux
from aqueue.server import EmbeddedServer, free_port
from aqueue.testing import drain

from .helpers import Peek, araw_client, wait_for

pytestmark = pytest.mark.anyio


class Msg(msgspec.Struct):
    text: str


mux = Mux()


@mux.task("note", queue="notes", max_retry=7, timeout=12, retention=30)
async def note(ctx: Context, msg: Msg) -> str:
    return msg.text.upper()


@pytest.fixture
async def client(url: str) -> AsyncIterator[aqueue.Client]:
    async with aqueue.Client(url) as c:
        yield c


async def test_enqueue_returns_the_task_as_stored(client: aqueue.Client, url: str) -> None:
    info = await client.enqueue(note, Msg("hi"), headers={"k": "v"})
    assert info.type == "note"
    assert info.payload == {"text": "hi"}  # decoded builtins, never raw bytes
    assert (info.queue, info.state, info.max_retry, info.timeout) == ("notes", "pending", 7, 12.0)
    assert info.retention == 30.0 and info.headers == {"k": "v"}
    assert info.enqueued_at is not None and info.enqueued_at.tzinfo is UTC
    peek = Peek(url, "notes")
    try:
        assert await peek.state(info.id) == "pending"
        assert await peek.pending() == [info.id]
    finally:
        await peek.close()


async def test_option_precedence_explicit_then_handler_then_client(url: str) -> None:
    async with aqueue.Client(url, defaults={"queue": "fallback", "max_retry": 2}) as c:
        by_handler = await c.enqueue(note, Msg("a"))
        explicit = await c.enqueue(note, Msg("a"), queue="other", max_retry=1)
        by_name = await c.enqueue("note", {"text": "a"})
    assert (by_handler.queue, by_handler.max_retry) == ("notes", 7)
    assert (explicit.queue, explicit.max_retry) == ("other", 1)
    assert (by_name.queue, by_name.max_retry, by_name.timeout) == ("fallback", 2, 1800.0)


async def test_deadline_without_timeout_has_no_default_timeout(client: aqueue.Client) -> None:
    deadline = datetime.now(UTC) + timedelta(minutes=5)
    info = await client.enqueue("t", deadline=deadline)
    assert info.timeout is None
    assert info.deadline is not None and abs((info.deadline - deadline).total_seconds()) < 0.01


async def test_process_at_in_the_past_means_now(client: aqueue.Client) -> None:
    info = await client.enqueue("t", process_at=datetime.now(UTC) - timedelta(hours=1))
    assert info.state == "pending" and info.next_process_at is None
    later = await client.enqueue("t", process_in=timedelta(seconds=60))
    assert later.state == "scheduled" and later.next_process_at is not None


async def test_unique_lock_refuses_equal_tasks_until_the_task_ends(url: str) -> None:
    umux = Mux()
    attempts = 0

    @umux.task("sync:user", max_retry=1)
    async def sync_user(ctx: Context, user_id: int) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("first attempt fails")

    async with aqueue.Client(url) as c:
        first = await c.enqueue(sync_user, 42, unique=3600)
        with pytest.raises(aqueue.DuplicateTask, match=first.id):
            await c.enqueue(sync_user, 42, unique=3600)
        await c.enqueue(sync_user, 43, unique=3600)  # another payload is another task
        await c.enqueue(sync_user, 42, unique=3600, queue="elsewhere")  # another queue too
        # The lock survives a retry...
        async with aqueue.Worker(umux, url, retry_delay=lambda n, e, t: 0.3):
            peek = Peek(url)
            await wait_for(lambda: _state_is(peek, first.id, "retry"))
            await peek.close()
        with pytest.raises(aqueue.DuplicateTask):
            await c.enqueue(sync_user, 42, unique=3600)
        # ...and goes when the task reaches a final state.
        await drain(umux, url, queues=["default"], retry_delay=lambda n, e, t: 0)
        await c.enqueue(sync_user, 42, unique=3600)


async def test_unique_lock_expires_after_its_ttl(client: aqueue.Client) -> None:
    await client.enqueue("t", 1, unique=0.2)
    with pytest.raises(aqueue.DuplicateTask):
        await client.enqueue("t", 1, unique=0.2)
    await anyio.sleep(0.25)  # the outcome under test is the passage of the TTL itself
    await client.enqueue("t", 1, unique=0.2)


async def test_task_id_conflicts_with_a_live_task_only(url: str) -> None:
    async with aqueue.Client(url) as c:
        await c.enqueue(note, Msg("x"), task_id="report-1", retention=0)
        with pytest.raises(aqueue.TaskIdConflict, match="'report-1'.*'pending'"):
            await c.enqueue(note, Msg("y"), task_id="report-1")
        await drain(mux, url, queues=["notes"])
        # Done and deleted (retention 0): the id is free again.
        again = await c.enqueue(note, Msg("z"), task_id="report-1")
        assert again.id == "report-1"


async def test_enqueue_many_is_one_round_trip(aqueue_url: str) -> None:
    r = redis.Redis.from_url(aqueue_url)
    async with aqueue.Client(aqueue_url) as c:
        await c.enqueue("warm", queue="q1")
        await c.enqueue("warm", queue="q2")
        r.config_resetstat()
        jobs: list[Job[Any]] = [
            Job("t", {"n": i}, queue="q1" if i % 2 else "q2") for i in range(400)
        ]
        infos = await c.enqueue_many(jobs)
    stats = r.info("commandstats")
    r.close()
    assert [i.payload["n"] for i in infos] == list(range(400))  # order kept
    assert stats["cmdstat_evalsha"]["calls"] == 2  # one script call per queue
    assert "cmdstat_sadd" not in stats  # known queues are not registered again


async def test_enqueue_many_reports_refusals_per_job(client: aqueue.Client) -> None:
    await client.enqueue("t", task_id="taken")
    results = await client.enqueue_many(
        [Job("t", task_id="taken"), Job("t", task_id="free")], return_exceptions=True
    )
    assert isinstance(results[0], aqueue.TaskIdConflict)
    assert isinstance(results[1], aqueue.TaskInfo) and results[1].id == "free"
    with pytest.raises(aqueue.TaskIdConflict):
        await client.enqueue_many([Job("t", task_id="taken")])


async def test_enqueue_many_validates_every_job_before_writing(
    client: aqueue.Client, url: str
) -> None:
    with pytest.raises(aqueue.InvalidQueueName, match="'no spaces'"):
        await client.enqueue_many([Job("t", 1), Job("t", 2, queue="no spaces")])
    r = araw_client(url)  # on a cluster, DBSIZE of every master
    assert await r.dbsize() == 0
    await r.aclose()


async def test_an_existing_redis_client_is_used_and_left_open(aqueue_url: str) -> None:
    r = aioredis.Redis.from_url(aqueue_url)
    async with aqueue.Client(r) as c:
        await c.enqueue("t")
    assert await r.ping()  # not closed by the Client
    assert await r.llen("aq:{default}:pending") == 1
    await r.aclose()


@pytest.fixture(scope="module")
def unix_server() -> Iterator[str]:
    path = Path(tempfile.mkdtemp(prefix="aq-sock-")) / "valkey.sock"
    with EmbeddedServer(extra=["--unixsocket", str(path), "--unixsocketperm", "700"]):
        yield f"unix://{path}?db=0"


async def test_unix_socket_url(unix_server: str) -> None:
    async with aqueue.Client(unix_server) as c:
        info = await c.enqueue("t")
    r = aioredis.Redis.from_url(unix_server)
    assert await r.hget("aq:{default}:states", info.id) == b"pending"
    await r.aclose()


@pytest.fixture(scope="module")
def tls_server() -> Iterator[str]:
    if shutil.which("redis-server") is None or shutil.which("openssl") is None:
        pytest.skip("needs redis-server built with TLS and openssl")
    d = Path(tempfile.mkdtemp(prefix="aq-tls-"))
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(d / "k.pem"), "-out", str(d / "c.pem"), "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(d / "c.pem"), "--tls-key-file", str(d / "k.pem"),
         "--tls-auth-clients", "no", "--save", "", "--dir", str(d)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none"
    try:
        for _ in range(200):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.RedisError:
                if proc.poll() is not None:
                    pytest.skip("this redis-server has no TLS support")
                anyio.run(anyio.sleep, 0.02)
        yield url
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)


async def test_rediss_url_speaks_tls(tls_server: str) -> None:
    async with aqueue.Client(tls_server) as c:
        info = await c.enqueue("t", {"secure": True})
    r = aioredis.Redis.from_url(tls_server)
    assert await r.hget("aq:{default}:states", info.id) == b"pending"
    await r.aclose()


async def _state_is(peek: Peek, task_id: str, state: str) -> bool:
    return await peek.state(task_id) == state
