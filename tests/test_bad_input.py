"""Bad input (SPEC §5): a clear error of the right type naming the bad value, never a
hang, and nothing written. Worker-side bad input ends where the SPEC says: an unknown
type is retried, a payload that fails validation is archived."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, cast

import anyio
import anyio.abc
import msgspec
import pytest
import redis.asyncio as aioredis

from aqueue import (
    AqueueError,
    BrokerUnavailable,
    Client,
    Context,
    InvalidPayload,
    InvalidQueueName,
    Job,
    Mux,
    PayloadTooLarge,
    Worker,
)
from aqueue.server import EmbeddedServer, free_port

from .helpers import LOCKED_PASSWORD as PASSWORD
from .helpers import Peek, araw_client, wait_for

pytestmark = pytest.mark.anyio

LIMIT = 1000
# How much later than its timeout a call may give up (scheduling on a busy machine).
MARGIN = 1.5


class Email(msgspec.Struct):
    to: str
    subject: str


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


mux = Mux()


@mux.task("bad:email")
async def send_email(ctx: Context, email: Email) -> None:
    pass


@mux.task("bad:ping")
async def ping(ctx: Context) -> None:
    pass


async def _dbsize(url: str) -> int:
    r = araw_client(url)  # on a cluster, every master's keys
    try:
        return int(await r.dbsize())
    finally:
        await r.aclose()


@pytest.fixture
async def client(url: str) -> AsyncIterator[Client]:
    async with Client(url, max_payload_bytes=LIMIT) as c:
        yield c


@pytest.fixture
async def nothing_written(url: str) -> AsyncIterator[None]:
    """Checks, after the test, that the (flushed) server is still empty."""
    assert await _dbsize(url) == 0
    yield
    assert await _dbsize(url) == 0


# -- payloads --------------------------------------------------------------------------


@pytest.mark.usefixtures("nothing_written")
@pytest.mark.parametrize("payload", [Opaque(), {"nested": [1, Opaque()]}])
async def test_unencodable_payload_raises_invalid_payload(client: Client, payload: Any) -> None:
    with pytest.raises(InvalidPayload, match="Opaque thing") as caught:
        await client.enqueue("bad:any", payload)
    assert not isinstance(caught.value, PayloadTooLarge)


@pytest.mark.usefixtures("nothing_written")
async def test_payload_over_the_limit_raises_payload_too_large_naming_the_sizes(
    client: Client,
) -> None:
    payload = "x" * 1500
    size = len(msgspec.msgpack.encode(payload))
    with pytest.raises(PayloadTooLarge) as caught:
        await client.enqueue("bad:any", payload)
    assert isinstance(caught.value, InvalidPayload)
    assert str(size) in str(caught.value)
    assert str(LIMIT) in str(caught.value)


async def test_payload_of_exactly_the_limit_is_accepted(client: Client) -> None:
    at_limit = "x" * (LIMIT - 3)  # a msgpack str of 256..65535 bytes has a 3-byte header
    assert len(msgspec.msgpack.encode(at_limit)) == LIMIT
    await client.enqueue("bad:any", at_limit)
    with pytest.raises(PayloadTooLarge):
        await client.enqueue("bad:any", at_limit + "x")


@pytest.mark.usefixtures("nothing_written")
@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({"to": "a@b.c"}, "subject"),
        ({"to": 5, "subject": "hi"}, "$.to"),
        (Email(to="a@b.c", subject=cast(Any, 5)), "$.subject"),
        ("just a string", "'just a string'"),
    ],
)
async def test_payload_not_matching_the_handler_type_is_refused_before_writing(
    client: Client, payload: Any, named: str
) -> None:
    with pytest.raises(InvalidPayload) as caught:
        await client.enqueue(send_email, payload)
    message = str(caught.value)
    assert named in message
    assert "bad:email" in message


@pytest.mark.usefixtures("nothing_written")
async def test_payload_for_a_handler_taking_none_is_refused(client: Client) -> None:
    with pytest.raises(InvalidPayload) as caught:
        await client.enqueue(ping, cast(Any, {"a": 1}))
    assert "bad:ping" in str(caught.value)
    assert "{'a': 1}" in str(caught.value)


@pytest.mark.usefixtures("nothing_written")
async def test_one_bad_job_in_enqueue_many_writes_nothing(client: Client) -> None:
    good = Job(send_email, Email(to="a@b.c", subject="hi"))
    bad = Job(send_email, cast(Any, {"to": "a@b.c"}))
    with pytest.raises(InvalidPayload, match="subject"):
        await client.enqueue_many([good, good, bad])


# -- queue names -----------------------------------------------------------------------

BAD_QUEUE_NAMES = [
    pytest.param("", id="empty"),
    pytest.param("q" * 101, id="101-chars"),
    pytest.param("a b", id="space"),
    pytest.param("é", id="non-ascii"),
    pytest.param("a{b}", id="braces"),
    pytest.param(5, id="int"),
    pytest.param(b"bytes", id="bytes"),
]


@pytest.mark.usefixtures("nothing_written")
@pytest.mark.parametrize("name", BAD_QUEUE_NAMES)
async def test_invalid_queue_name_in_enqueue(client: Client, name: Any) -> None:
    with pytest.raises(InvalidQueueName) as caught:
        await client.enqueue("bad:any", queue=name)
    assert repr(name) in str(caught.value)
    with pytest.raises(InvalidQueueName):
        await client.enqueue_many([Job("bad:any", queue=name)])


@pytest.mark.parametrize("name", BAD_QUEUE_NAMES)
def test_invalid_queue_name_in_worker_and_handler_options(name: Any) -> None:
    for queues in ([name], {name: 1}):
        with pytest.raises(InvalidQueueName) as caught:
            Worker(mux, "redis://127.0.0.1:1/0", queues=queues)
        assert repr(name) in str(caught.value)
    with pytest.raises(InvalidQueueName):
        Mux().task("bad:any", queue=name)(ping.fn)


async def test_a_queue_name_of_100_allowed_characters_is_valid(client: Client) -> None:
    name = ("Az09_.:-" * 13)[:100]
    info = await client.enqueue("bad:any", queue=name)
    assert info.queue == name


# -- options ---------------------------------------------------------------------------

NAIVE = datetime(2030, 1, 1, 12, 0)
AWARE = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.usefixtures("nothing_written")
@pytest.mark.parametrize(
    ("options", "named"),
    [
        pytest.param({"max_retry": -1}, "-1", id="max_retry-negative"),
        pytest.param({"max_retry": 2.5}, "2.5", id="max_retry-float"),
        pytest.param({"timeout": 0}, "timeout", id="timeout-0"),
        pytest.param({"timeout": -5}, "-5", id="timeout-negative"),
        pytest.param({"timeout": "10s"}, "'10s'", id="timeout-text"),
        pytest.param({"unique": 0}, "unique", id="unique-0"),
        pytest.param({"retention": -1}, "retention", id="retention-negative"),
        pytest.param({"deadline": NAIVE}, repr(NAIVE), id="deadline-naive"),
        pytest.param({"process_at": NAIVE}, repr(NAIVE), id="process_at-naive"),
        pytest.param({"process_at": "tomorrow"}, "'tomorrow'", id="process_at-text"),
        pytest.param({"process_in": 5, "process_at": AWARE}, "process_in", id="both-timings"),
        pytest.param({"prosess_in": 5}, "prosess_in", id="unknown-option"),
        pytest.param({"headers": {"a": 1}}, "{'a': 1}", id="headers-int-value"),
        pytest.param({"headers": "a=1"}, "'a=1'", id="headers-text"),
        pytest.param({"task_id": ""}, "task_id", id="task_id-empty"),
        pytest.param({"task_id": "a|b"}, "'a|b'", id="task_id-pipe"),
    ],
)
async def test_bad_option_raises_naming_the_value(
    client: Client, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(AqueueError) as caught:
        await client.enqueue("bad:any", **options)
    assert named in str(caught.value)
    with pytest.raises(AqueueError):
        await client.enqueue_many([Job("bad:any", **options)])


def test_bad_client_defaults_are_refused_at_construction() -> None:
    with pytest.raises(AqueueError, match="-3"):
        Client("redis://127.0.0.1:1/0", defaults={"max_retry": -3})
    with pytest.raises(AqueueError, match="max_payload_bytes"):
        Client("redis://127.0.0.1:1/0", max_payload_bytes=0)


# -- servers that are down, refuse auth, or are not Redis ------------------------------


@asynccontextmanager
async def _timed(limit: float) -> AsyncIterator[None]:
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    assert elapsed < limit + MARGIN, f"gave up after {elapsed:.2f} s, timeout was {limit} s"


async def test_server_down_raises_broker_unavailable_at_once() -> None:
    port = free_port()
    async with Client(f"redis://127.0.0.1:{port}/0", timeout=1.0) as c, _timed(1.0):
        with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{port}"):
            await c.enqueue("bad:any")


@asynccontextmanager
async def _fake_peer(reply: bytes | None) -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that is not Redis: it answers ``reply`` to whatever
    it is sent, or (``None``) accepts and never answers."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                await stream.receive()
                if reply is not None:
                    await stream.send(reply)
                await anyio.sleep_forever()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(None, id="silent"),
        pytest.param(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", id="http"),
        pytest.param(b"\x00\x01garbage\r\n", id="garbage"),
    ],
)
async def test_a_peer_that_is_not_redis_raises_broker_unavailable_within_the_timeout(
    reply: bytes | None,
) -> None:
    async with (
        _fake_peer(reply) as port,
        Client(f"redis://127.0.0.1:{port}/0", timeout=0.5) as c,
        _timed(0.5),
    ):
        with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{port}"):
            await c.enqueue("bad:any")


def _with_auth(server: EmbeddedServer, userinfo: str) -> str:
    return f"redis://{userinfo}127.0.0.1:{server.port}/0"


@pytest.mark.parametrize(
    "userinfo",
    [
        pytest.param("", id="no-password"),
        pytest.param(":wr0ng-pass@", id="wrong-password"),
        pytest.param("default:wr0ng-pass@", id="wrong-password-with-user"),
    ],
)
async def test_server_refusing_auth_raises_broker_unavailable(
    locked_server: EmbeddedServer, userinfo: str
) -> None:
    async with Client(_with_auth(locked_server, userinfo), timeout=2.0) as c, _timed(2.0):
        with pytest.raises(BrokerUnavailable) as caught:
            await c.enqueue("bad:any")
    assert f"127.0.0.1:{locked_server.port}" in str(caught.value)
    assert "wr0ng-pass" not in str(caught.value)
    assert "wr0ng-pass" not in repr(caught.value.__cause__)


async def test_the_right_password_is_accepted(locked_server: EmbeddedServer) -> None:
    async with Client(_with_auth(locked_server, f":{PASSWORD}@"), timeout=2.0) as c:
        info = await c.enqueue("bad:any", queue="auth-ok")
    r = aioredis.Redis.from_url(_with_auth(locked_server, f":{PASSWORD}@"))
    try:
        assert await r.hget("aq:{auth-ok}:states", info.id) == b"pending"
    finally:
        await r.flushdb()
        await r.aclose()


async def test_password_of_a_down_server_is_not_in_the_error() -> None:
    port = free_port()
    async with Client(f"redis://:hunter2@127.0.0.1:{port}/0", timeout=1.0) as c:
        with pytest.raises(BrokerUnavailable) as caught:
            await c.enqueue("bad:any")
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "hunter2" not in str(caught.value)


async def test_worker_entered_on_a_down_server_raises_broker_unavailable() -> None:
    """``async with worker:`` makes first contact on entry, so that an application's
    startup fails while its server is down; ``run()`` waits for the server instead
    (tests/test_worker_start.py)."""
    worker = Worker(mux, f"redis://:hunter2@127.0.0.1:{free_port()}/0", timeout=1.0)
    with pytest.raises(BrokerUnavailable) as caught, anyio.fail_after(1.0 + MARGIN):
        await _serve(worker, "async-with")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("how", ["run", "async-with"])
async def test_worker_refused_by_the_server_raises_broker_unavailable_at_once(
    locked_server: EmbeddedServer, how: str
) -> None:
    worker = Worker(mux, _with_auth(locked_server, ":wr0ng-pass@"), timeout=1.0)
    with pytest.raises(BrokerUnavailable) as caught, anyio.fail_after(1.0 + MARGIN):
        await _serve(worker, how)
    assert f"127.0.0.1:{locked_server.port}" in str(caught.value)
    assert "wr0ng-pass" not in str(caught.value)


async def _serve(worker: Worker, how: str) -> None:
    if how == "run":
        await worker.run()
    else:
        async with worker:
            pass


# -- bad input found by the worker -----------------------------------------------------


async def test_unknown_task_type_is_retried_with_an_error_naming_the_type(url: str) -> None:
    async with Client(url) as c:
        info = await c.enqueue("bad:from-the-future", {"x": 1}, queue="q", max_retry=3)
    peek = Peek(url, "q")
    try:
        async with Worker(mux, url, queues=["q"], retry_delay=lambda *a: 3600.0):
            await wait_for(lambda: _is(peek.state(info.id), "retry"))
        error = await peek.error(info.id)
        assert error is not None
        assert "'bad:from-the-future'" in error
        assert await peek.retried(info.id) == 1
        assert await peek.r.zscore(peek.k + "retry", info.id) is not None
        assert await peek.r.zscore(peek.k + "archived", info.id) is None
    finally:
        await peek.close()


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        pytest.param({"to": "a@b.c"}, "subject", id="missing-field"),
        pytest.param({"to": 5, "subject": "hi"}, "$.to", id="wrong-type"),
        pytest.param([1, 2], "Email", id="not-an-object"),
    ],
)
async def test_payload_failing_validation_in_the_worker_is_archived_with_the_message(
    url: str, payload: Any, named: str
) -> None:
    async with Client(url) as c:
        # By name, so the client cannot check the payload against the handler.
        info = await c.enqueue("bad:email", payload, queue="q")
    peek = Peek(url, "q")
    try:
        async with Worker(mux, url, queues=["q"], retry_delay=lambda *a: 0.0):
            await wait_for(lambda: _is(peek.state(info.id), "archived"))
        error = await peek.error(info.id)
        assert error is not None
        assert named in error
        # Archived at once: a retry would fail the same way.
        assert await peek.retried(info.id) == 0
        assert await peek.r.zscore(peek.k + "archived", info.id) is not None
        assert await peek.r.zscore(peek.k + "retry", info.id) is None
    finally:
        await peek.close()


async def _is(state: Awaitable[str | None], expected: str) -> bool:
    return await state == expected
