"""Fixtures of the worker-crash tests: real worker subprocesses and a view of the server.

``workers`` starts ``aqueue worker tests.chaos.worker_app:worker`` children against the
test's server; whatever is still running at the end of the test (stopped ones too) is
killed. ``store`` reads what the handlers recorded and the queue's raw keys.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from .worker_app import DONE, EVENTS, STARTS, Event

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.chaos.worker_app:worker"
# A child interpreter importing aqueue can take a while on a busy 2-core machine.
START_TIMEOUT = 20.0


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``check`` until it is true; fail the test, naming ``what``, after ``timeout``.

    The waits here end in ``move_on_after`` and fail after it, not in an ``except
    TimeoutError``: a failure then reports one exception, not a chain of three.
    """
    with anyio.move_on_after(timeout):
        while True:
            if await check():
                return
            await anyio.sleep(0.01)
    pytest.fail(f"not true after {timeout} s: {what}")


class WorkerProcess:
    """One ``aqueue worker`` child; its stderr (the log) goes to a file."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    async def exit_code(self, timeout: float = START_TIMEOUT) -> int:
        with anyio.move_on_after(timeout):
            while True:
                code = self.popen.poll()
                if code is not None:
                    return code
                await anyio.sleep(0.01)
        pytest.fail(f"worker {self.name} did not exit within {timeout} s; its log: {self.log}")

    async def wait_log(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """Wait until the worker's log matches ``pattern``."""
        with anyio.move_on_after(timeout):
            while not (match := re.search(pattern, self.stderr())):
                if not self.alive():
                    pytest.fail(
                        f"worker {self.name} exited ({self.popen.returncode}) before "
                        f"logging {pattern!r}; its log: {self.log}"
                    )
                await anyio.sleep(0.01)
            return match
        pytest.fail(f"worker {self.name} never logged {pattern!r}; its log: {self.log}")

    async def ready(self) -> WorkerProcess:
        """Wait until the worker holds its lease and serves its queues."""
        await self.wait_log(r"worker \w+ serving queues")
        return self


class Workers:
    """Starts worker subprocesses; ``close()`` kills what is left."""

    def __init__(self, url: str, directory: Path) -> None:
        self.url = url
        self.directory = directory
        self.started: list[WorkerProcess] = []

    def start(
        self,
        *,
        concurrency: int = 10,
        lease_ttl: float = 3.0,
        shutdown_timeout: float | None = None,
        url: str | None = None,
        record_url: str | None = None,
        wrap: Callable[[list[str]], list[str]] | None = None,
    ) -> WorkerProcess:
        """A worker of the server at ``url`` (the fixture's by default) whose handlers
        record at ``record_url`` (the same by default); ``wrap`` rewrites its command
        (to run it in a network namespace, say)."""
        n = len(self.started)
        name = chr(ord("A") + n) if n < 26 else f"W{n}"
        args = [
            sys.executable, "-m", "aqueue._cli", "worker", APP, "--url", url or self.url,
            "--concurrency", str(concurrency), "--no-scheduler",
        ]  # fmt: skip
        if shutdown_timeout is not None:
            args += ["--shutdown-timeout", str(shutdown_timeout)]
        if wrap is not None:
            args = wrap(args)
        record = record_url or url or self.url
        env = {**os.environ, "AQUEUE_URL": record, "CHAOS_LEASE_TTL": str(lease_ttl)}
        log = self.directory / f"worker-{name}.log"
        with log.open("wb") as err:
            popen = subprocess.Popen(
                args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err
            )
        w = WorkerProcess(name, popen, log)
        self.started.append(w)
        return w

    def close(self) -> None:
        for w in self.started:
            if w.alive():
                w.signal(signal.SIGCONT)  # a stopped process cannot act on SIGKILL's exit
                w.signal(signal.SIGKILL)
            w.popen.wait(timeout=10)


@pytest.fixture(name="workers")
def workers_fixture(aqueue_url: str, tmp_path: Path) -> Iterator[Workers]:
    workers = Workers(aqueue_url, tmp_path)
    try:
        yield workers
    finally:
        workers.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Store:
    """What handlers recorded, and one queue's raw keys, read straight from the server."""

    def __init__(self, url: str, queue: str = "default") -> None:
        self.r = aioredis.Redis.from_url(url)
        self.k = f"aq:{{{queue}}}:"

    async def _hash(self, key: str) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in (await self.r.hgetall(key)).items()}

    async def _counts(self, key: str) -> dict[str, int]:
        return {k: int(v) for k, v in (await self._hash(key)).items()}

    async def events(self) -> list[Event]:
        raw: list[bytes] = await self.r.lrange(EVENTS, 0, -1)  # type: ignore[assignment]
        return [msgspec.json.decode(e, type=Event) for e in raw]

    async def starts(self) -> dict[str, int]:
        return await self._counts(STARTS)

    async def done(self) -> dict[str, int]:
        return await self._counts(DONE)

    async def states(self) -> dict[str, str]:
        return await self._hash(self.k + "states")

    async def retried(self) -> dict[str, int]:
        return await self._counts(self.k + "retried")

    async def errors(self) -> dict[str, str]:
        return await self._hash(self.k + "errors")

    async def failed_at(self) -> dict[str, int]:
        """Task id -> when its last attempt failed (epoch ms)."""
        return await self._counts(self.k + "failed_at")

    async def stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in (await self._hash(self.k + "stats")).items() if ":" not in k}

    async def pending(self) -> list[str]:
        """Pending ids, next to run first."""
        return [_text(i) for i in reversed(await self.r.lrange(self.k + "pending", 0, -1))]

    async def result(self, task_id: str) -> Any:
        raw = await self.r.hget(self.k + "results", task_id)
        if raw is None:
            return None
        assert isinstance(raw, bytes)
        return msgspec.msgpack.decode(raw)

    async def lease_lists(self) -> dict[str, list[str]]:
        """Worker id -> the ids its lease list holds (empty lists do not exist)."""
        out: dict[str, list[str]] = {}
        async for key in self.r.scan_iter(match=self.k + "l:*"):
            ids = await self.r.lrange(key, 0, -1)
            out[_text(key).rpartition(":")[2]] = [_text(i) for i in ids]
        return out

    async def blocked_clients(self) -> int:
        """How many connections are blocked in a command such as BLMOVE right now."""
        return sum("b" in c.get("flags", "") for c in await self.r.client_list())

    async def close(self) -> None:
        await self.r.aclose()


@pytest.fixture(name="store")
async def store_fixture(aqueue_url: str) -> AsyncIterator[Store]:
    store = Store(aqueue_url)
    try:
        yield store
    finally:
        await store.close()
