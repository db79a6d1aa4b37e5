"""``aqueue worker --processes N``: a supervisor and N real worker processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
import anyio.abc
import pytest
import redis.asyncio as aioredis

import aqueue

from .apps.processes_app import Mark
from .helpers import text, wait_for

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
APP = "tests.apps.processes_app:mux"
KEY = "proc:done"


class Supervised:
    def __init__(self, process: anyio.abc.Process, err: Path) -> None:
        self.process = process
        self.err = err

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def child_pids(self) -> list[int]:
        """Pids the supervisor reported starting, in order."""
        return [int(p) for p in re.findall(r"started worker process \d+/\d+ \(pid (\d+)\)",
                                           self.stderr())]  # fmt: skip

    async def exit_code(self, timeout: float = 30) -> int:
        with anyio.fail_after(timeout):
            return await self.process.wait()


@asynccontextmanager
async def supervisor(tmp_path: Path, url: str, *flags: str) -> AsyncIterator[Supervised]:
    err = tmp_path / "stderr.txt"
    with err.open("wb") as err_file:
        process = await anyio.open_process(
            [sys.executable, "-m", "aqueue._cli", "worker", APP, "--url", url, *flags],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
    run = Supervised(process, err)
    try:
        yield run
    finally:
        if process.returncode is None:
            process.kill()  # children get SIGTERM from PR_SET_PDEATHSIG
            await process.wait()
        # No child may outlive the test, whatever happened.
        for pid in run.child_pids():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await process.aclose()


async def _enqueue(url: str, n: int, hold: float = 0.0, start: int = 0) -> set[str]:
    values = {str(i) for i in range(start, start + n)}
    async with aqueue.Client(url) as client:
        await client.enqueue_many(
            [aqueue.Job("proc:mark", Mark(url, KEY, v, hold)) for v in sorted(values)]
        )
    return values


async def _done(r: aioredis.Redis) -> list[tuple[str, int]]:
    items = [str(text(x)).split("|") for x in await r.lrange(KEY, 0, -1)]
    return [(v, int(pid)) for v, pid in items]


async def test_tasks_are_processed_by_n_distinct_worker_processes(
    aqueue_url: str, tmp_path: Path
) -> None:
    r = aioredis.Redis.from_url(aqueue_url)
    async with supervisor(tmp_path, aqueue_url, "--processes", "3", "-c", "2") as run:
        await wait_for(lambda: len(run.child_pids()) == 3, timeout=15)
        # Each handler holds 0.2 s and each process runs 2 at once: 18 tasks keep all
        # three busy, so every process takes some.
        values = await _enqueue(aqueue_url, 18, hold=0.2)

        async def all_done() -> bool:
            return len(await _done(r)) == len(values)

        await wait_for(all_done, timeout=20)
        done = await _done(r)
        run.process.send_signal(signal.SIGTERM)
        assert await run.exit_code() == 0
    await r.aclose()
    assert {v for v, _ in done} == values
    pids = {pid for _, pid in done}
    assert pids == set(run.child_pids())
    assert len(pids) == 3
    assert run.process.pid not in pids


async def test_a_killed_worker_process_is_restarted_and_work_continues(
    aqueue_url: str, tmp_path: Path
) -> None:
    r = aioredis.Redis.from_url(aqueue_url)
    async with supervisor(
        tmp_path, aqueue_url, "--processes", "2", "--shutdown-timeout", "5"
    ) as run:
        await wait_for(lambda: len(run.child_pids()) == 2, timeout=15)
        victim = run.child_pids()[0]
        os.kill(victim, signal.SIGKILL)
        await wait_for(lambda: len(run.child_pids()) == 3, timeout=15)
        assert f"pid {victim} exited unexpectedly (code -9); restarting" in run.stderr()
        replacement = run.child_pids()[2]
        assert replacement != victim
        # Work continues: everything enqueued after the kill is done by live processes.
        values = await _enqueue(aqueue_url, 20, hold=0.05)

        async def all_done() -> bool:
            return {v for v, _ in await _done(r)} == values

        await wait_for(all_done, timeout=20)
        run.process.send_signal(signal.SIGTERM)
        assert await run.exit_code() == 0
    pids = {pid for _, pid in await _done(r)}
    await r.aclose()
    assert victim not in pids
    assert pids <= set(run.child_pids()[1:])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_every_process_gracefully_and_loses_no_task(
    aqueue_url: str, tmp_path: Path, sig: signal.Signals
) -> None:
    r = aioredis.Redis.from_url(aqueue_url)
    k = "aq:{default}:"
    async with supervisor(
        tmp_path, aqueue_url, "--processes", "2", "-c", "3", "--shutdown-timeout", "10"
    ) as run:
        await wait_for(lambda: len(run.child_pids()) == 2, timeout=15)
        values = await _enqueue(aqueue_url, 30, hold=0.3)

        async def some_started() -> bool:
            states = [str(text(s)) for s in await r.hvals(k + "states")]
            return sum(s.startswith("@") for s in states) >= 4

        await wait_for(some_started, timeout=15)
        run.process.send_signal(sig)
        assert await run.exit_code() == 0, run.stderr()
    # Nothing is left active: every task is either done or back in pending.
    states = {str(text(i)): str(text(s)) for i, s in (await r.hgetall(k + "states")).items()}
    done = {v for v, _ in await _done(r)}
    pending = len(await r.lrange(k + "pending", 0, -1))
    leases = await r.zcard(k + "leases")
    await r.aclose()
    assert not any(s.startswith("@") for s in states.values()), states
    assert len(done) + pending == len(values)
    assert len(done) >= 4  # the handlers that were running finished within the timeout
    assert leases == 0
    assert "all worker processes stopped" in run.stderr()
    for pid in run.child_pids():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_usage_error_exits_2_before_starting_any_process(aqueue_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aqueue._cli", "worker", "tests.apps.nope:mux", "-p", "2",
         "--url", aqueue_url],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot import module" in result.stderr
    assert "started worker process" not in result.stderr


def test_processes_must_be_a_positive_integer() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aqueue._cli", "worker", APP, "--processes", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "expected an integer >= 1" in result.stderr
