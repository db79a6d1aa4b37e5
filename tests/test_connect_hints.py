"""A connection that fails for a reason the user can fix says that reason.

Against real local servers: a Valkey that requires a password, given none ("the server
requires a password", not its text about HELLO's AUTH option, nor "Connection closed by
server", which is what Valkey's guard against long unauthenticated commands looks like);
a ``rediss://`` URL on a server without TLS ("TLS handshake failed", within the client's
timeout, where the handshake alone would hang until it); and a port where something
other than Redis listens ("not a Redis server"). Each through the Client (aqueue's own
connections), the Inspector (redis-py's, RESP3 and RESP2), the Worker and the command.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

import aqueue
from aqueue import BrokerUnavailable
from aqueue.server import EmbeddedServer

from .helpers import LOCKED_PASSWORD

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "aqueue._cli"]
TIMEOUT = 1.0
# The bound is the timeout; the margin is for a loaded 2-core machine.
MARGIN = 3.0
PASSWORD_HINT = "the server requires a password (add it to the URL: redis://:PASSWORD@host...)"
TLS_HINT = "TLS handshake failed: is the server speaking TLS?"
NOT_REDIS = "not a Redis server"
HTTP_REPLY = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

Call = Callable[[str], Awaitable[object]]


async def _enqueue(url: str) -> object:
    async with aqueue.Client(url, timeout=TIMEOUT) as client:
        return await client.enqueue("hint:any", {"n": 1})


async def _queues(url: str) -> object:
    async with aqueue.Inspector(url, timeout=TIMEOUT) as inspector:
        return await inspector.queues()


async def _worker(url: str) -> object:
    async with aqueue.Worker(aqueue.Mux(), url, timeout=TIMEOUT):
        return None


CALLS = [
    pytest.param(_enqueue, id="Client.enqueue"),
    pytest.param(_queues, id="Inspector.queues"),
    pytest.param(_worker, id="async-with-Worker"),
]


async def _refused(call: Call, url: str) -> str:
    """The message of the ``BrokerUnavailable`` that ``call`` raises, within the timeout."""
    started = time.monotonic()
    with anyio.fail_after(TIMEOUT + MARGIN), pytest.raises(BrokerUnavailable) as caught:
        await call(url)
    elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT + MARGIN, f"took {elapsed:.2f} s, timeout {TIMEOUT} s"
    return str(caught.value)


async def _stats(url: str) -> str:
    """``aqueue stats --url URL``: its one error line (exit 1)."""
    env = {k: v for k, v in os.environ.items() if k != "AQUEUE_URL"}
    argv = [*CLI, "stats", "--url", url, "--timeout", str(TIMEOUT)]
    with anyio.fail_after(30):
        done = await anyio.run_process(argv, cwd=ROOT, env=env, check=False)
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("aqueue: error:")]
    assert len(errors) == 1, err
    return errors[0]


# -- a password the server requires -------------------------------------------------------


def _no_password(server: EmbeddedServer, query: str = "") -> str:
    return f"redis://127.0.0.1:{server.port}/0{query}"


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("query", ["", "?protocol=2", "?protocol=3"])
async def test_a_password_missing_is_named_not_the_servers_text(
    locked_server: EmbeddedServer, call: Call, query: str
) -> None:
    message = await _refused(call, _no_password(locked_server, query))
    assert PASSWORD_HINT in message
    assert f"127.0.0.1:{locked_server.port}" in message
    assert "HELLO" not in message
    assert "closed" not in message


async def test_a_password_missing_is_one_line_from_the_command(
    locked_server: EmbeddedServer,
) -> None:
    line = await _stats(_no_password(locked_server))
    assert line == (
        f"aqueue: error: cannot use the server at {_no_password(locked_server)}: {PASSWORD_HINT}"
    )


async def test_a_wrong_password_is_not_called_missing(locked_server: EmbeddedServer) -> None:
    url = f"redis://:wr0ng@127.0.0.1:{locked_server.port}/0"
    for call in (_enqueue, _queues):
        message = await _refused(call, url)
        assert "requires a password" not in message
        assert "WRONGPASS" in message or "invalid username-password" in message
        assert "wr0ng" not in message


async def test_the_right_password_still_works(locked_server: EmbeddedServer) -> None:
    url = f"redis://:{LOCKED_PASSWORD}@127.0.0.1:{locked_server.port}/0"
    info = await _enqueue(url)
    assert isinstance(info, aqueue.TaskInfo)


# -- rediss:// on a server without TLS ------------------------------------------------------


def _tls(url: str) -> str:
    return "rediss://" + url.removeprefix("redis://")


@pytest.mark.parametrize("call", CALLS)
async def test_rediss_on_a_plaintext_server_says_the_tls_handshake_failed(
    aqueue_url: str, call: Call
) -> None:
    message = await _refused(call, _tls(aqueue_url))
    assert TLS_HINT in message
    assert "did not answer" not in message


async def test_rediss_on_a_plaintext_server_is_one_line_from_the_command(aqueue_url: str) -> None:
    line = await _stats(_tls(aqueue_url))
    assert TLS_HINT in line


async def test_rediss_on_a_server_that_is_not_redis_either_says_the_tls_handshake_failed() -> None:
    async with _peer(HTTP_REPLY) as port:
        message = await _refused(_enqueue, f"rediss://127.0.0.1:{port}/0")
    assert TLS_HINT in message


# -- a port where something else listens --------------------------------------------------


@asynccontextmanager
async def _peer(reply: bytes) -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that is not Redis: whatever it is sent, it answers
    ``reply`` (an HTTP server's error, or bytes of no protocol) and waits."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                await stream.receive()
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


PEERS = [
    pytest.param(HTTP_REPLY, id="http"),
    pytest.param(b"\x00\x17\x03garbage\r\n", id="garbage"),
]


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("reply", PEERS)
async def test_a_port_that_is_not_redis_says_so(call: Call, reply: bytes) -> None:
    async with _peer(reply) as port:
        message = await _refused(call, f"redis://127.0.0.1:{port}/0")
    assert NOT_REDIS in message
    assert f"127.0.0.1:{port}" in message


@pytest.mark.parametrize("reply", PEERS)
async def test_a_port_that_is_not_redis_is_one_line_from_the_command(reply: bytes) -> None:
    async with _peer(reply) as port:
        line = await _stats(f"redis://127.0.0.1:{port}/0")
    assert NOT_REDIS in line
