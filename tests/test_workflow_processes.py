"""Workflows across worker processes: exactly-once release when a worker is SIGKILLed
at each point of a step's hand-over, and a 2,000-step group with one fan-in drained by
two `aqueue worker` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

import aqueue

from .helpers import text, wait_for

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
APP = "tests.apps.flow_crash_app"


@contextmanager
def worker(env: dict[str, str], target: str = f"{APP}:worker") -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "aqueue._cli", "worker", target]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


@pytest.mark.parametrize("point", ["after_handler", "before_record", "before_write"])
async def test_a_step_is_released_once_whatever_point_its_worker_dies_at(
    url: str, aqueue_url: str, tmp_path: Path, point: str
) -> None:
    """On every server kind; on the cluster, the two steps' queues are on different
    masters from each other and from the flow's own keys."""
    r = redis.Redis.from_url(aqueue_url)  # the recording server
    r.flushdb()
    env = {
        **os.environ, "AQUEUE_URL": url, "FLOWTEST_URL": aqueue_url,
        "FLOWTEST_CRASH_AT": point, "FLOWTEST_MARK": str(tmp_path / "crashed"),
    }  # fmt: skip
    async with aqueue.Client(url) as client:
        flow = aqueue.chain(aqueue.Job("first", 1), aqueue.Job("second", queue="reports"))
        info = await client.enqueue_flow(flow)
        with worker(env) as doomed:
            await wait_for(lambda: doomed.poll() is not None, timeout=20)
        assert doomed.returncode == -signal.SIGKILL
        with worker(env):
            assert await client.result(info, timeout=30) == 4
        done = await client.flow(info.id)
    seconds = [text(x) for x in r.lrange("flowtest:second", 0, -1)]
    firsts = [text(x) for x in r.lrange("flowtest:first", 0, -1)]
    r.close()
    assert seconds == ["2|0"], seconds  # released once, started once
    # Killed after its handler returned, the first step ran again (at-least-once).
    assert firsts == (["1|0", "1|1"] if point == "after_handler" else ["1|0"])
    assert done.state == "completed" and done.done == 2


async def test_a_group_of_2000_with_one_fan_in_across_two_processes(
    url: str, aqueue_url: str
) -> None:
    r = redis.Redis.from_url(aqueue_url)  # the recording server
    r.flushdb()
    env = {**os.environ, "AQUEUE_URL": url, "FLOWTEST_URL": aqueue_url}
    async with aqueue.Client(url) as client:
        members = aqueue.group(aqueue.Job("member", i) for i in range(2000))
        info = await client.enqueue_flow(aqueue.chain(members, aqueue.Job("count")))
        assert info.total == 2001
        with worker(env), worker(env):
            assert await client.result(info, timeout=60) == 2000
    counts = [text(x) for x in r.lrange("flowtest:count", 0, -1)]
    r.close()
    assert counts == ["2000"]  # the fan-in ran once, after all members
