"""A worker started before its server is usable waits for it (docs/cli.md, "Starting
before the server").

``aqueue worker`` (a real subprocess) and ``Worker.run()`` started while nothing
listens on the server's port, or while the server is still loading its data, wait with
the backoff of an outage: one line says so, and they serve as soon as the server
answers. What waiting cannot fix (refused credentials, a peer that is not Redis) still
ends the command at once with one ``aqueue: error:`` line and exit code 1. A SIGTERM
while waiting is a clean exit (0), at once.
"""

from __future__ import annotations

import functools
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.abc
import pytest
import redis

import aqueue
from aqueue.server import EmbeddedServer, free_port

from .apps.cli_app import Note, mux, note
from .helpers import araw_client, wait_for
from .test_cli import APP, CLI, ROOT, _env, _run, cli

pytestmark = pytest.mark.anyio

WAITING = "waiting for the server"
REACHED = "server reachable after waiting"
# The backoff between tries is capped at 5 s: the worker tries again within that of the
# server's start, plus a margin for a loaded 2-core machine.
PICKUP = 5.0 + 10.0


def _url(port: int, userinfo: str = "") -> str:
    return f"redis://{userinfo}127.0.0.1:{port}/0"


async def _processed(url: str, key: str, value: str, log: Callable[[], str]) -> None:
    """Enqueue a note for the worker and wait until it ran; ``log`` tells why not."""
    async with aqueue.Client(url) as client:
        await client.enqueue(note, Note(url, key, value))
    r = araw_client(url)

    async def done() -> bool:
        return value.encode() in await r.lrange(key, 0, -1)

    try:
        await wait_for(done, timeout=PICKUP)
    except TimeoutError:
        pytest.fail(f"the worker did not run the task; its log:\n{log()}")
    finally:
        await r.aclose()


def _lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if prefix in line]


# -- waiting: nothing listens yet, or the server is loading its data ---------------------


async def test_worker_started_before_its_server_waits_and_serves_once_it_answers(
    tmp_path: Path,
) -> None:
    port = free_port()
    server = EmbeddedServer(port)
    try:
        async with cli(tmp_path, "worker", f"{APP}:mux", "--url", _url(port)) as run:
            await run.wait_for_output(WAITING)
            # The outage itself (not a wait for an outcome): long enough for several
            # tries, as the backoff grows 0.1, 0.2, 0.4, 0.8 s...
            await anyio.sleep(3)
            await anyio.to_thread.run_sync(server.start)
            await _processed(server.url, "late-server", "a", run.stderr)
            run.send(signal.SIGTERM)
            assert await run.exit_code() == 0
            err = run.stderr()
    finally:
        server.close()
    assert len(_lines(err, WAITING)) == 1, err  # one line, not one per try
    assert len(_lines(err, REACHED)) == 1, err
    assert "serving queues" in err
    assert "aqueue: error" not in err


def _fill(server: EmbeddedServer, keys: int) -> None:
    """Write ``keys`` keys and snapshot them to the server's dump.rdb."""
    r = redis.Redis(port=server.port)
    try:
        for start in range(0, keys, 1000):
            r.mset({f"filler:{i}": "x" * 10 for i in range(start, start + 1000)})
        r.save()
    finally:
        r.close()


def _ping(port: int) -> bytes:
    """The start of the reply to PING of the server on ``port`` (b"" if none)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16)
    except OSError:
        return b""


# 20,000 keys at 1 ms each: up to 20 s of loading, until the test lifts the delay.
FILLER_KEYS = 20_000
SLOW_LOAD = ["--key-load-delay", "1000", "--loading-process-events-interval-bytes", "1024"]


async def test_worker_started_while_its_server_loads_its_data_serves_once_loaded(
    tmp_path: Path,
) -> None:
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    with EmbeddedServer(port, directory=data) as first:
        _fill(first, FILLER_KEYS)
    server = EmbeddedServer(port, directory=data, extra=SLOW_LOAD)
    try:
        async with anyio.create_task_group() as tg:
            # start() returns once the server answers PING, that is once it has loaded.
            tg.start_soon(anyio.to_thread.run_sync, functools.partial(server.start, 60))
            await wait_for(lambda: _ping(port).startswith(b"-LOADING"), timeout=20)
            async with cli(tmp_path, "worker", f"{APP}:mux", "--url", _url(port)) as run:
                await run.wait_for_output(WAITING)
                assert _ping(port).startswith(b"-LOADING"), "loaded before the worker tried"
                r = redis.Redis(port=port)  # CONFIG is allowed while loading
                try:
                    r.config_set("key-load-delay", 0)
                finally:
                    r.close()
                await wait_for(lambda: _ping(port) == b"+PONG\r\n", timeout=20)
                await _processed(server.url, "after-load", "b", run.stderr)
                run.send(signal.SIGTERM)
                assert await run.exit_code() == 0
                err = run.stderr()
    finally:
        server.close()
    waiting = _lines(err, WAITING)
    assert len(waiting) == 1, err
    assert "loading" in waiting[0], err
    assert len(_lines(err, REACHED)) == 1, err


async def test_worker_run_waits_for_its_server_and_stop_or_cancel_ends_the_wait() -> None:
    port = free_port()
    worker = aqueue.Worker(mux, _url(port), timeout=1.0)
    server = EmbeddedServer(port)
    try:
        with anyio.fail_after(PICKUP + 10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.run)
                await wait_for(lambda: worker._outage.down, timeout=10)
                await anyio.to_thread.run_sync(server.start)
                await _processed(server.url, "run-waited", "c", lambda: "(in this process)")
                worker.stop()
        # Stopped while waiting: run() returns at once.
        worker = worker.replace(_url(free_port()))
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await wait_for(lambda: worker._outage.down, timeout=10)
            stopped = time.monotonic()
            worker.stop()
        assert time.monotonic() - stopped < 1.0
        # Cancelled while waiting: no shielded goodbye to a server that is not there.
        worker = worker.replace()
        started = time.monotonic()
        with anyio.move_on_after(1.0):
            await worker.run()
        assert time.monotonic() - started < 2.0
    finally:
        server.close()


async def test_sigterm_while_waiting_for_the_server_exits_0_at_once(tmp_path: Path) -> None:
    url = _url(free_port())
    async with cli(tmp_path, "worker", f"{APP}:mux", "--url", url) as run:
        await run.wait_for_output(WAITING)
        sent = time.monotonic()
        run.send(signal.SIGTERM)
        assert await run.exit_code() == 0
        took = time.monotonic() - sent
        err = run.stderr()
    assert took < 3.0, f"took {took:.2f} s to exit; stderr:\n{err}"
    assert "stopped before its server answered" in err
    assert "Traceback" not in err


# -- failing fast: what waiting cannot fix ------------------------------------------------


@pytest.mark.parametrize(
    "userinfo",
    [
        pytest.param("", id="no-password"),
        pytest.param(":wr0ng-pass@", id="wrong-password"),
        pytest.param("default:wr0ng-pass@", id="wrong-password-with-user"),
    ],
)
def test_refused_credentials_exit_1_at_once_with_one_line(
    locked_server: EmbeddedServer, userinfo: str
) -> None:
    started = time.monotonic()
    result = _run("worker", f"{APP}:mux", "--url", _url(locked_server.port, userinfo))
    # One try within the 5 s server timeout, plus the child's start-up.
    assert time.monotonic() - started < 10
    assert result.returncode == 1, result.stderr
    errors = _lines(result.stderr, "aqueue: error:")
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("aqueue: error: cannot use the server at redis://")
    assert f"127.0.0.1:{locked_server.port}" in errors[0]
    assert "wr0ng-pass" not in result.stderr
    assert WAITING not in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_peer_that_is_not_redis_exits_1_at_once_with_one_line() -> None:
    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                await stream.receive()
                await stream.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                await anyio.sleep_forever()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        with anyio.fail_after(20):
            result = await anyio.run_process(
                [*CLI, "worker", f"{APP}:mux", "--url", _url(port)],
                cwd=ROOT,
                env=_env(),
                check=False,
            )
        tg.cancel_scope.cancel()
    err = result.stderr.decode()
    assert result.returncode == 1, err
    errors = _lines(err, "aqueue: error:")
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0], err
    assert WAITING not in err
    assert "Traceback" not in err
