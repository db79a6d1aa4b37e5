"""The ``aqueue`` command line: ``worker`` and ``dev``, run as real subprocesses.

The child runs with the repository as its working directory, so ``tests.apps.cli_app``
is importable the way a user's ``app.tasks:mux`` is. Its output goes to files, read
while it runs: a pipe nobody drains could block the child.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

import anyio
import anyio.abc
import pytest
import redis

import aqueue
from aqueue.server import free_port

from .apps.cli_app import Note, note
from .helpers import Peek, araw_client, node_url, wait_for

ROOT = Path(__file__).resolve().parents[1]
APP = "tests.apps.cli_app"
CLI = [sys.executable, "-m", "aqueue._cli"]
# Starting a child interpreter and importing aqueue takes a while on a busy machine.
EXIT_TIMEOUT = 20.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AQUEUE_URL"}
    env.update(extra)
    return env


def _closed_url() -> str:
    """A loopback URL where nothing listens."""
    return f"redis://127.0.0.1:{free_port()}/0"


def _run(*args: str, timeout: float = EXIT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion (for commands that exit by themselves)."""
    return subprocess.run(
        [*CLI, *args],
        cwd=ROOT,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Running:
    """A CLI child process whose stdout and stderr are written to files."""

    def __init__(self, process: anyio.abc.Process, out: Path, err: Path) -> None:
        self.process = process
        self._out = out
        self._err = err

    def stdout(self) -> str:
        return self._out.read_text(errors="replace")

    def stderr(self) -> str:
        return self._err.read_text(errors="replace")

    def send(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    async def exit_code(self, timeout: float = EXIT_TIMEOUT) -> int:
        try:
            with anyio.fail_after(timeout):
                return await self.process.wait()
        except TimeoutError:
            pytest.fail(f"the CLI did not exit within {timeout} s; stderr:\n{self.stderr()}")

    async def wait_for_output(self, pattern: str, *, stream: str = "stderr") -> re.Match[str]:
        read = self.stdout if stream == "stdout" else self.stderr
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = re.search(pattern, read())
            if match:
                found.append(match)
            if self.process.returncode is not None and not match:
                pytest.fail(f"the CLI exited early ({self.process.returncode}):\n{self.stderr()}")
            return match is not None

        await wait_for(seen, timeout=EXIT_TIMEOUT)
        return found[0]


def _open_logs(directory: Path) -> tuple[Path, Path, IO[bytes], IO[bytes]]:
    out, err = directory / "stdout.txt", directory / "stderr.txt"
    return out, err, out.open("wb"), err.open("wb")


@asynccontextmanager
async def cli(tmp_path: Path, *args: str, **env: str) -> AsyncIterator[Running]:
    """Start ``aqueue ARGS...``; on the way out, make sure the child is gone (SIGTERM
    first, so that ``aqueue dev`` stops its embedded server)."""
    out, err, out_file, err_file = _open_logs(tmp_path)
    try:
        process = await anyio.open_process(
            [*CLI, *args],
            cwd=ROOT,
            env=_env(**env),
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=err_file,
        )
    finally:
        out_file.close()
        err_file.close()
    try:
        yield Running(process, out, err)
    finally:
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(10):
                await process.wait()
        if process.returncode is None:
            process.kill()
        await process.aclose()


async def _values(url: str, key: str) -> list[str]:
    r = araw_client(url)
    try:
        values = await r.lrange(key, 0, -1)
        return [v.decode() if isinstance(v, bytes) else v for v in values]
    finally:
        await r.aclose()


def _note(url: str, key: str, value: str, hold: float = 0.0) -> Note:
    """The handler writes with a plain client: on a cluster, give it the URL of the
    master of ``key`` (and of ``key:started``: tag the key, e.g. ``{slow}``)."""
    return Note(node_url(url, key), key, value, hold)


async def _wait_values(run: Running, url: str, key: str, expected: set[str]) -> None:
    """Wait until the list ``key`` holds ``expected``; on failure show what the CLI said."""

    async def done() -> bool:
        return set(await _values(url, key)) == expected

    try:
        await wait_for(done, timeout=EXIT_TIMEOUT)
    except TimeoutError:
        seen = await _values(url, key)
        pytest.fail(f"{key} holds {seen}, not {sorted(expected)}; CLI stderr:\n{run.stderr()}")


# -- worker: processing and shutdown ---------------------------------------------------


@pytest.mark.anyio
async def test_worker_processes_tasks_from_every_queue_it_is_given(
    url: str, tmp_path: Path
) -> None:
    async with aqueue.Client(url) as client:
        for i in range(6):
            queue = "a" if i % 2 else "b"
            await client.enqueue(note, _note(url, "done", f"{queue}{i}"), queue=queue)
    args = ["worker", f"{APP}:mux", "--url", url, "--concurrency", "4"]
    async with cli(tmp_path, *args, "--queue", "a=3", "--queue", "b=1") as run:
        await _wait_values(run, url, "done", {"b0", "a1", "b2", "a3", "b4", "a5"})
        # Tasks enqueued while the worker runs are picked up too.
        async with aqueue.Client(url) as client:
            await client.enqueue(note, _note(url, "late", "x"), queue="b")
        await _wait_values(run, url, "late", {"x"})
        run.send(signal.SIGTERM)
        assert await run.exit_code() == 0
    peek_a, peek_b = Peek(url, "a"), Peek(url, "b")
    try:
        # Completed with retention 0: nothing is left of the tasks.
        assert await peek_a.r.hlen(peek_a.k + "states") == 0
        assert await peek_b.r.hlen(peek_b.k + "states") == 0
        assert (await peek_a.stats())["p"] == "3"
        assert (await peek_b.stats())["p"] == "4"
    finally:
        await peek_a.close()
        await peek_b.close()


@pytest.mark.anyio
async def test_sigterm_waits_for_a_handler_that_finishes_within_shutdown_timeout(
    url: str, tmp_path: Path
) -> None:
    args = ["worker", f"{APP}:mux", "--url", url, "--shutdown-timeout", "15"]
    async with cli(tmp_path, *args) as run:
        async with aqueue.Client(url) as client:
            await client.enqueue(note, _note(url, "{slow}", "v", hold=0.5))
        await _wait_values(run, url, "{slow}:started", {"v"})
        run.send(signal.SIGTERM)
        assert await run.exit_code() == 0
    assert await _values(url, "{slow}") == ["v"]
    peek = Peek(url)
    try:
        assert await peek.r.hlen(peek.k + "states") == 0
    finally:
        await peek.close()


@pytest.mark.anyio
async def test_sigterm_returns_a_handler_still_running_at_shutdown_timeout_to_pending(
    url: str, tmp_path: Path
) -> None:
    args = ["worker", f"{APP}:mux", "--url", url, "--queue", "a=1", "--shutdown-timeout", "0.2"]
    async with cli(tmp_path, *args) as run:
        async with aqueue.Client(url) as client:
            info = await client.enqueue(note, _note(url, "{stuck}", "v", hold=3600), queue="a")
        await _wait_values(run, url, "{stuck}:started", {"v"})
        run.send(signal.SIGTERM)
        assert await run.exit_code(timeout=10) == 0
    assert await _values(url, "{stuck}") == []
    peek = Peek(url, "a")
    try:
        # Back at the head of its queue, not lost, and the attempt did not count.
        assert await peek.pending() == [info.id]
        assert await peek.state(info.id) == "pending"
        assert await peek.retried(info.id) == 0
        assert await peek.error(info.id) is None
    finally:
        await peek.close()


@pytest.mark.anyio
async def test_sigint_stops_the_worker_with_exit_code_0(aqueue_url: str, tmp_path: Path) -> None:
    async with cli(tmp_path, "worker", f"{APP}:mux", "--url", aqueue_url) as run:
        async with aqueue.Client(aqueue_url) as client:
            await client.enqueue(note, Note(aqueue_url, "done", "v"))
        await _wait_values(run, aqueue_url, "done", {"v"})
        run.send(signal.SIGINT)
        assert await run.exit_code() == 0
    assert "Traceback" not in run.stderr()


@pytest.mark.anyio
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_worker_runs_on_the_event_loop_asked_for(
    aqueue_url: str, tmp_path: Path, loop: str
) -> None:
    """uvloop (aqueue-redis[fast], installed here) by default; the default loop on request."""
    args = ["--loop", loop] if loop == "asyncio" else []
    async with cli(tmp_path, "worker", f"{APP}:mux", "--url", aqueue_url, *args) as run:
        async with aqueue.Client(aqueue_url) as client:
            await client.enqueue(note, Note(aqueue_url, "done", "v"))
        await _wait_values(run, aqueue_url, "done", {"v"})
        run.send(signal.SIGTERM)
        assert await run.exit_code() == 0
    assert f"event loop: {loop}" in run.stderr()


@pytest.mark.anyio
async def test_worker_reads_the_url_from_aqueue_url(aqueue_url: str, tmp_path: Path) -> None:
    async with cli(tmp_path, "worker", f"{APP}:mux", AQUEUE_URL=aqueue_url) as run:
        async with aqueue.Client(aqueue_url) as client:
            await client.enqueue(note, Note(aqueue_url, "done", "v"))
        await _wait_values(run, aqueue_url, "done", {"v"})
        run.send(signal.SIGTERM)
        assert await run.exit_code() == 0


@pytest.mark.anyio
async def test_a_worker_attribute_brings_its_own_settings(aqueue_url: str, tmp_path: Path) -> None:
    # tests.apps.cli_app:worker serves "from-worker" with concurrency 3 and a 0.2 s
    # shutdown timeout; only the URL is given here.
    async with cli(tmp_path, "worker", f"{APP}:worker", "--url", aqueue_url) as run:
        await run.wait_for_output(r"serving queues .*'from-worker'.* with concurrency 3")
        async with aqueue.Client(aqueue_url) as client:
            await client.enqueue(note, Note(aqueue_url, "done", "v"), queue="from-worker")
            stuck = await client.enqueue(
                note, Note(aqueue_url, "stuck", "v", hold=3600), queue="from-worker"
            )
        await _wait_values(run, aqueue_url, "done", {"v"})
        await _wait_values(run, aqueue_url, "stuck:started", {"v"})
        run.send(signal.SIGTERM)
        # The Worker's 0.2 s shutdown timeout applies, not the default 10 s.
        assert await run.exit_code(timeout=8) == 0
    peek = Peek(aqueue_url, "from-worker")
    try:
        assert await peek.pending() == [stuck.id]
    finally:
        await peek.close()


@pytest.mark.anyio
async def test_flags_given_explicitly_override_the_worker_attribute(
    aqueue_url: str, tmp_path: Path
) -> None:
    args = ["worker", f"{APP}:worker", "--url", aqueue_url, "--queue", "other=1", "-c", "2"]
    async with cli(tmp_path, *args) as run:
        await run.wait_for_output(r"serving queues .*'other'.* with concurrency 2")
        async with aqueue.Client(aqueue_url) as client:
            await client.enqueue(note, Note(aqueue_url, "done", "v"), queue="other")
        await _wait_values(run, aqueue_url, "done", {"v"})
        run.send(signal.SIGTERM)
        assert await run.exit_code() == 0
    assert "from-worker" not in run.stderr()


# -- dev -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_dev_runs_an_embedded_server_and_a_worker(tmp_path: Path) -> None:
    async with cli(tmp_path, "dev", f"{APP}:mux") as run:
        match = await run.wait_for_output(r"\A.*(redis://\S+?/\d+)", stream="stdout")
        url = match.group(1)
        assert run.stdout().splitlines()[0].startswith("aqueue dev")
        assert re.fullmatch(r"redis://127\.0\.0\.1:\d+/0", url)
        async with aqueue.Client(url) as client:
            await client.enqueue(note, Note(url, "done", "v"))
        await _wait_values(run, url, "done", {"v"})
        run.send(signal.SIGTERM)
        assert await run.exit_code() == 0
    # The embedded server went away with the command.
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()


# -- help and usage errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], ["usage: aqueue", "worker", "dev"]),
        (["worker"], ["usage: aqueue worker", "MODULE:ATTR", "--concurrency", "--queue", "--url"]),
        (["dev"], ["usage: aqueue dev", "MODULE:ATTR", "--port"]),
    ],
)
def test_help_prints_usage_and_exits_0(args: list[str], expected: list[str]) -> None:
    result = _run(*args, "--help")
    assert result.returncode == 0, result.stderr
    for text in expected:
        assert text in result.stdout


def test_installed_entry_point_runs() -> None:
    script = Path(sys.executable).parent / "aqueue"
    if not script.exists():
        pytest.skip(f"no installed aqueue script next to {sys.executable}")
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=EXIT_TIMEOUT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "usage: aqueue" in result.stdout


@pytest.mark.parametrize(
    ("args", "named"),
    [
        pytest.param(["worker"], "MODULE:ATTR", id="missing-app"),
        pytest.param(["worker", "nocolon"], "'nocolon'", id="no-colon"),
        pytest.param(["worker", ":mux"], "':mux'", id="no-module"),
        pytest.param(
            ["worker", "tests.apps.no_such_module:mux"],
            "'tests.apps.no_such_module'",
            id="unknown-module",
        ),
        pytest.param(["worker", f"{APP}:no_such_attr"], "'no_such_attr'", id="unknown-attr"),
        pytest.param(["worker", f"{APP}:settings"], f"'{APP}:settings' is a dict", id="not-app"),
        pytest.param(["worker", f"{APP}:mux", "--concurrency", "0"], "'0'", id="concurrency-0"),
        pytest.param(["worker", f"{APP}:mux", "-c", "many"], "'many'", id="concurrency-text"),
        pytest.param(["worker", f"{APP}:mux", "--queue", "a=x"], "'x'", id="weight-text"),
        pytest.param(["worker", f"{APP}:mux", "--queue", "a b=1"], "'a b'", id="queue-name"),
        pytest.param(["worker", f"{APP}:mux", "--queue", "a=0"], "'a'", id="weight-0"),
        pytest.param(
            ["worker", f"{APP}:mux", "--shutdown-timeout", "-1"], "-1", id="shutdown-negative"
        ),
        pytest.param(["worker", f"{APP}:mux", "--no-such-flag"], "--no-such-flag", id="flag"),
        pytest.param(["worker", f"{APP}:mux", "--loop", "trio"], "'trio'", id="loop"),
        pytest.param(["dev", "nocolon"], "'nocolon'", id="dev-no-colon"),
        pytest.param(["frobnicate"], "'frobnicate'", id="command"),
    ],
)
def test_usage_errors_exit_2_naming_the_bad_value(args: list[str], named: str) -> None:
    # A closed port: should a usage error slip through, nothing real gets touched.
    extra = ["--url", _closed_url()] if args[:1] == ["worker"] else []
    result = _run(*args, *extra)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert named in result.stderr
    assert "Traceback" not in result.stderr


# A worker started while its server is down waits for it, and refused credentials fail
# at once: tests/test_worker_start.py.
