"""Timeouts, deadlines, cancellation and graceful shutdown, with real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

import aqueue

from ..helpers import Peek, text, wait_for
from .life_app import EVENTS

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    def __init__(self, url: str, *args: str) -> None:
        env = {**os.environ, "AQUEUE_URL": url}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aqueue._cli", "worker", "tests.chaos.life_app:mux", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            message = f"worker did not stop within {timeout} s:\n{out.decode()}"
            raise AssertionError(message) from None
        return self.proc.returncode, out.decode()


@pytest.fixture
def workers(aqueue_url: str) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.communicate()


@pytest.fixture
async def peek(aqueue_url: str) -> AsyncIterator[Peek]:
    p = Peek(aqueue_url)
    yield p
    await p.close()


async def events(peek: Peek, task_id: str) -> list[str]:
    raw = await peek.r.lrange(EVENTS, 0, -1)
    return [str(text(e)).split("|")[0] for e in raw if f"|{task_id}|" in str(text(e))]


async def test_timeout_cancels_the_handler_and_the_retry_policy_applies(
    aqueue_url: str, peek: Peek, workers: list[WorkerProcess]
) -> None:
    workers.append(WorkerProcess(aqueue_url))
    async with aqueue.Client(aqueue_url) as client:
        info = await client.enqueue("life:sleep", 30, timeout=0.3, max_retry=1)
    # Attempt 1 times out, its retry waits the default backoff (15 s or more): bring it
    # forward, as an operator would, instead of waiting.
    await wait_for(lambda: _state_is(peek, info.id, "retry"), timeout=15)
    await peek.r.zadd(peek.k + "retry", {info.id: 0})
    await wait_for(lambda: _state_is(peek, info.id, "archived"), timeout=15)
    assert await events(peek, info.id) == ["start", "cancelled", "start", "cancelled"]
    assert await peek.error(info.id) == "TimeoutError: task timed out after 0.3 s"
    assert await peek.retried(info.id) == 1
    code, _ = workers[0].stop()
    assert code == 0


async def test_deadline_reached_while_running_cancels_the_attempt(
    aqueue_url: str, peek: Peek, workers: list[WorkerProcess]
) -> None:
    workers.append(WorkerProcess(aqueue_url))
    async with aqueue.Client(aqueue_url) as client:
        warm = await client.enqueue("life:sleep", 0)  # the worker is up once this ran
        await wait_for(lambda: _has(peek, warm.id, "done"), timeout=15)
        deadline = datetime.now(UTC) + timedelta(seconds=1)
        info = await client.enqueue("life:sleep", 30, deadline=deadline, max_retry=0)
    await wait_for(lambda: _state_is(peek, info.id, "archived"), timeout=15)
    error = await peek.error(info.id)
    assert error is not None
    assert error.startswith("TimeoutError: task passed its deadline")
    assert await events(peek, info.id) == ["start", "cancelled"]


async def test_task_whose_deadline_passed_before_it_started_fails_without_running(
    aqueue_url: str, peek: Peek, workers: list[WorkerProcess]
) -> None:
    deadline = datetime.now(UTC) + timedelta(seconds=0.2)
    async with aqueue.Client(aqueue_url) as client:
        info = await client.enqueue("life:sleep", 0, deadline=deadline)
    await anyio.sleep(0.3)  # no worker runs while the deadline passes: that is the case
    workers.append(WorkerProcess(aqueue_url))
    await wait_for(lambda: _state_is(peek, info.id, "archived"), timeout=15)
    error = await peek.error(info.id)
    assert error is not None
    assert "passed before the task started" in error
    assert await events(peek, info.id) == []


async def test_cancel_running_and_pending_tasks(
    aqueue_url: str, peek: Peek, workers: list[WorkerProcess]
) -> None:
    workers.append(WorkerProcess(aqueue_url, "--concurrency", "1"))
    async with aqueue.Client(aqueue_url) as client:
        running = await client.enqueue("life:sleep", 30)
        waiting = await client.enqueue("life:sleep", 0)
        await wait_for(lambda: _has(peek, running.id, "start"), timeout=15)
        await client.cancel("default", waiting.id)  # pending: archived, never runs
        assert await peek.state(waiting.id) == "archived"
        await client.cancel("default", running.id)  # active: handler cancelled
        await wait_for(lambda: _state_is(peek, running.id, "archived"), timeout=15)
        after = await client.enqueue("life:sleep", 0)
        await wait_for(lambda: _has(peek, after.id, "done"), timeout=15)
    assert await events(peek, running.id) == ["start", "cancelled"]
    assert await events(peek, waiting.id) == []
    assert await peek.error(running.id) == "cancelled"
    assert await peek.retried(running.id) == 0
    code, _ = workers[0].stop()
    assert code == 0


async def test_sigterm_gives_handlers_their_time_then_requeues_the_rest(
    aqueue_url: str, peek: Peek, workers: list[WorkerProcess]
) -> None:
    workers.append(WorkerProcess(aqueue_url, "--concurrency", "4", "--shutdown-timeout", "1"))
    async with aqueue.Client(aqueue_url) as client:
        quick = await client.enqueue("life:sleep", 0.3)
        slow = [await client.enqueue("life:sleep", 30) for _ in range(3)]
    for info in [quick, *slow]:
        await wait_for(lambda i=info.id: _has(peek, i, "start"), timeout=15)  # type: ignore[misc]
    started = time.monotonic()
    code, output = workers[0].stop(signal.SIGTERM)
    assert code == 0
    assert time.monotonic() - started < 8  # shutdown_timeout 1 s, not the tasks' 30 s
    assert await events(peek, quick.id) == ["start", "done"]  # finished in its time
    for info in slow:
        assert await events(peek, info.id) == ["start", "cancelled"]
        assert await peek.state(info.id) == "pending"
        assert await peek.retried(info.id) == 0
    assert sorted(await peek.pending()) == sorted(i.id for i in slow)
    assert await peek.r.keys(peek.k + "l:*") == []  # lease released
    assert "returned 3 unfinished task(s)" in output


async def _state_is(peek: Peek, task_id: str, state: str) -> bool:
    return await peek.state(task_id) == state


async def _has(peek: Peek, task_id: str, kind: str) -> bool:
    return kind in await events(peek, task_id)
