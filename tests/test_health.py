"""``aqueue worker --health-port``: the probes an orchestrator polls, answered by real
worker processes (and by a supervisor for its children) about real servers.

The worker runs as a subprocess with the repository as its working directory, its
output in a file (shown when a test fails). Probes are polled until they give the
expected answer within a deadline; where the spec bounds the time ("readyz turns 503
within a few seconds of losing the server"), the test asserts the time it took.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

import aqueue
from aqueue.server import EmbeddedServer, free_port

from .helpers import tail

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
APP = "tests.apps.health_app:mux"
CLI = [sys.executable, "-m", "aqueue._cli"]
# Starting an interpreter and importing aqueue (twice, under a supervisor) takes a
# while on a busy machine.
START_TIMEOUT = 30.0
# What "within a few seconds of losing the server" is held to.
NOTICE_WITHIN = 5.0


class Running:
    """A worker (or supervisor) process serving probes on ``port``."""

    def __init__(self, process: anyio.abc.Process, port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def child_pids(self) -> list[int]:
        found = re.findall(r"started worker process \d+/\d+ \(pid (\d+)\)", self.output())
        return [int(p) for p in found]

    async def probe(self, path: str) -> tuple[int, dict[str, Any]]:
        """The probe's status and JSON body; (0, {}) while nothing answers."""
        try:
            async with httpx.AsyncClient(timeout=2.0) as http:
                response = await http.get(f"http://127.0.0.1:{self.port}{path}")
        except httpx.TransportError:
            return 0, {}
        return response.status_code, response.json()

    async def until(self, path: str, status: int, timeout: float) -> dict[str, Any]:
        """Poll ``path`` until it answers ``status``; return that answer's body."""
        last: tuple[int, dict[str, Any]] = (0, {})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = await self.probe(path)
            if last[0] == status:
                return last[1]
            await anyio.sleep(0.05)
        pytest.fail(
            f"{path} did not answer {status} within {timeout:g} s (last: {last}); "
            f"output:\n{tail(self.output())}"
        )


@asynccontextmanager
async def worker(tmp_path: Path, url: str, *flags: str) -> AsyncIterator[Running]:
    port = free_port()
    log = tmp_path / f"worker-{port}.log"
    with log.open("wb") as out:
        process = await anyio.open_process(
            [*CLI, "worker", APP, "--url", url, "--health-port", str(port),
             "--health-host", "127.0.0.1", "--shutdown-timeout", "1", *flags],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )  # fmt: skip
    run = Running(process, port, log)
    try:
        yield run
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(15):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        for pid in run.child_pids():  # no child may outlive the test
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await process.aclose()


@pytest.fixture
def server() -> Iterator[EmbeddedServer]:
    """A server of this test's own, to kill and start again on the same port."""
    with EmbeddedServer() as s:
        yield s


async def block_the_loop(url: str, seconds: float) -> None:
    async with aqueue.Client(url) as client:
        await client.enqueue("health:block", seconds)


# -- one worker process ----------------------------------------------------------------


async def test_readyz_turns_503_soon_after_the_server_dies_and_200_once_it_returns(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    async with worker(tmp_path, server.url) as run:
        assert await run.until("/readyz", 200, START_TIMEOUT) == {"status": "ok"}
        assert await run.probe("/livez") == (200, {"status": "ok"})
        server.kill()
        lost = time.monotonic()
        body = await run.until("/readyz", 503, NOTICE_WITHIN)
        assert time.monotonic() - lost < NOTICE_WITHIN
        assert body == {"status": "unavailable", "reason": "cannot reach the server"}
        # The event loop is fine: only readiness fails.
        assert (await run.probe("/livez"))[0] == 200
        server.start()
        await run.until("/readyz", 200, 15)


async def test_livez_turns_503_while_a_handler_blocks_the_event_loop(
    aqueue_url: str, tmp_path: Path
) -> None:
    async with worker(tmp_path, aqueue_url) as run:
        await run.until("/readyz", 200, START_TIMEOUT)
        await block_the_loop(aqueue_url, 3.0)
        body = await run.until("/livez", 503, 5)
        assert body["status"] == "unavailable"
        assert re.fullmatch(r"event loop not responding for \d+\.\d s", body["reason"])
        assert (await run.probe("/readyz"))[0] == 503
        # Once the handler lets go of the loop, both recover.
        await run.until("/livez", 200, 10)
        await run.until("/readyz", 200, 5)


async def test_probes_answer_head_and_unknown_paths_get_404(
    aqueue_url: str, tmp_path: Path
) -> None:
    async with worker(tmp_path, aqueue_url) as run:
        await run.until("/readyz", 200, START_TIMEOUT)
        async with httpx.AsyncClient() as http:
            base = f"http://127.0.0.1:{run.port}"
            head = await http.head(f"{base}/livez")
            missing = await http.get(f"{base}/healthz")
            query = await http.get(f"{base}/readyz?verbose=1")
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["content-type"] == "application/json"
        assert missing.status_code == 404
        assert query.status_code == 200


# -- a supervisor and its children -----------------------------------------------------


async def test_supervisor_answers_200_only_while_every_child_would(
    aqueue_url: str, tmp_path: Path
) -> None:
    async with worker(tmp_path, aqueue_url, "--processes", "2") as run:
        assert await run.until("/readyz", 200, START_TIMEOUT) == {"status": "ok"}
        assert await run.probe("/livez") == (200, {"status": "ok"})
        first, second = run.child_pids()
        # One child blocks its loop: the supervisor's probes fail, naming that child.
        await block_the_loop(aqueue_url, 3.0)
        reason = (await run.until("/livez", 503, 5))["reason"]
        blocked = re.fullmatch(
            r"worker process ([12])/2 \(pid (\d+)\): event loop not responding for [\d.]+ s",
            reason,
        )
        assert blocked, reason
        assert int(blocked[2]) == (first, second)[int(blocked[1]) - 1]
        await run.until("/livez", 200, 10)
        await run.until("/readyz", 200, 5)
        # A child dies: the probes fail until the supervisor's replacement is ready.
        os.kill(first, signal.SIGKILL)
        reason = (await run.until("/readyz", 503, 5))["reason"]
        assert reason.startswith("worker process 1/2"), reason
        await run.until("/readyz", 200, START_TIMEOUT)
        assert len(run.child_pids()) == 3


async def test_supervisor_readyz_follows_the_server_for_every_child(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    async with worker(tmp_path, server.url, "--processes", "2") as run:
        await run.until("/readyz", 200, START_TIMEOUT)
        server.kill()
        lost = time.monotonic()
        reason = (await run.until("/readyz", 503, NOTICE_WITHIN))["reason"]
        assert time.monotonic() - lost < NOTICE_WITHIN
        assert "cannot reach the server" in reason
        assert (await run.probe("/livez"))[0] == 200
        server.start()
        await run.until("/readyz", 200, 15)


# -- usage -------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "AQUEUE_URL"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--health-port", "70000"], "expected a port number (1-65535), got '70000'"),
        (["--health-port", "0"], "expected an integer >= 1, got '0'"),
        (["--health-port", "http"], "expected an integer, got 'http'"),
        (["--health-host", "127.0.0.1"], "--health-host needs --health-port"),
    ],
)
def test_a_bad_health_flag_is_a_usage_error_before_the_app_is_imported(
    flags: list[str], error: str
) -> None:
    done = _cli("worker", "no_such_module:mux", *flags)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].endswith(error)
    assert "no_such_module" not in done.stderr.splitlines()[-1]


def test_a_health_port_in_use_exits_1_with_one_line(aqueue_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _cli(
            "worker", APP, "--url", aqueue_url, "--health-port", str(port),
            "--health-host", "127.0.0.1",
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"aqueue: error: cannot serve health probes on 127.0.0.1:{port}: Address already in use"
    )
