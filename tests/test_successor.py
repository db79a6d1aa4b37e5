"""A restarted worker takes its dead predecessor's tasks back at once, instead of
waiting out the lease (``aqueue/_worker/successor.py``): on the same host when the
predecessor's process is gone, or under the same ``--worker-id``; never from a worker
that still runs. Real ``aqueue worker`` processes at the default lease (30 s), killed
with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

import aqueue

from .helpers import text, wait_for

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
APP = "tests.apps.many_queues_app:worker"
# Well under the default lease: the take-over, not the reaper, brought the task back.
BACK_WITHIN = 12.0


@contextmanager
def worker(env: dict[str, str], *flags: str) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "aqueue._cli", "worker", APP, *flags]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _env(url: str, records: str) -> dict[str, str]:
    return {
        **os.environ, "AQUEUE_URL": url, "MQ_RECORDS": records, "MQ_QUEUES": "3",
        "MQ_LEASE_TTL": "30",
    }  # fmt: skip


def _starts(r: redis.Redis, task_id: str) -> list[tuple[int, float]]:
    rows = [str(text(x)).split("|") for x in r.lrange("mq:starts", 0, -1)]
    return [(int(row[2]), float(row[3])) for row in rows if row[0] == task_id]


@pytest.mark.parametrize("same_id", [False, True], ids=["dead-pid", "same-worker-id"])
async def test_a_restarted_worker_takes_its_dead_predecessors_task_back_at_once(
    url: str, aqueue_url: str, same_id: bool
) -> None:
    r = redis.Redis.from_url(aqueue_url)
    r.flushdb()
    env = _env(url, aqueue_url)
    flags = ["--worker-id", "pod-7"] if same_id else []
    try:
        async with aqueue.Client(url) as client:
            info = await client.enqueue("mq:hold", 60.0, queue="m1", max_retry=3)
            with worker(env, *flags) as doomed:
                await wait_for(lambda: len(_starts(r, info.id)) == 1, timeout=30)
                doomed.send_signal(signal.SIGKILL)
                doomed.wait(timeout=10)
                killed = time.time()
            with worker(env, *flags):
                await wait_for(lambda: len(_starts(r, info.id)) == 2, timeout=30)
        starts = _starts(r, info.id)
    finally:
        r.close()
    assert [attempt for attempt, _ in starts] == [0, 1]  # an attempt counted: worker lost
    assert starts[1][1] - killed < BACK_WITHIN, starts[1][1] - killed


async def test_a_worker_that_still_runs_is_never_taken_over(url: str, aqueue_url: str) -> None:
    """Two workers of this host: the second starts while the first runs a task; the
    first's pid is alive, so its task is left to it and runs once."""
    r = redis.Redis.from_url(aqueue_url)
    r.flushdb()
    env = _env(url, aqueue_url)
    try:
        async with aqueue.Client(url) as client:
            info = await client.enqueue("mq:hold", 3.0, queue="m1", retention=60)
            with worker(env):
                await wait_for(lambda: len(_starts(r, info.id)) == 1, timeout=30)
                with worker(env):
                    done = await client.result(info, timeout=30)
        starts = _starts(r, info.id)
    finally:
        r.close()
    assert done is None
    assert [attempt for attempt, _ in starts] == [0]


def test_a_bad_worker_id_is_refused_naming_it() -> None:
    with pytest.raises(aqueue.InvalidOption, match="'pod 7'"):
        aqueue.Worker(aqueue.Mux(), worker_id="pod 7")
    done = subprocess.run(
        [sys.executable, "-m", "aqueue._cli", "worker", APP, "--worker-id", "a:b"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "'a:b'" in done.stderr


def test_processes_need_a_worker_id_flag_not_a_shared_worker_id(tmp_path: Path) -> None:
    """Every process of `--processes N` would run under one id: a usage error."""
    (tmp_path / "shared_id.py").write_text(
        "import aqueue\nworker = aqueue.Worker(aqueue.Mux(), worker_id='one')\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    done = subprocess.run(
        [sys.executable, "-m", "aqueue._cli", "worker", "shared_id:worker", "--processes", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--worker-id" in done.stderr and "Traceback" not in done.stderr


async def test_supervised_processes_take_one_stable_id_each(aqueue_url: str) -> None:
    env = {**os.environ, "AQUEUE_URL": aqueue_url, "MQ_QUEUES": "2"}
    with worker(env, "--processes", "2", "--worker-id", "fleet") as supervisor:
        async with aqueue.Inspector(aqueue_url) as inspector:

            async def both() -> bool:
                ids = {w.id for w in await inspector.workers()}
                return {"fleet-1", "fleet-2"} <= ids

            await wait_for(both, timeout=30)
    assert supervisor.returncode == 0  # SIGTERM: a graceful stop
