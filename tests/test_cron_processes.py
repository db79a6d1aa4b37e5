"""Cron across processes: three `aqueue worker` processes, one enqueue per tick."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest
import redis

from .apps.cron_app import TICKS
from .helpers import text, wait_for

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]


async def test_three_worker_processes_enqueue_each_tick_exactly_once(aqueue_url: str) -> None:
    env = {**os.environ, "AQUEUE_URL": aqueue_url}
    command = [sys.executable, "-m", "aqueue._cli", "worker", "tests.apps.cron_app:mux"]
    spawn = subprocess.Popen  # returns at once: nothing blocks the loop
    procs = [spawn(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL) for _ in range(3)]
    r = redis.Redis.from_url(aqueue_url)
    try:
        await wait_for(lambda: r.llen(TICKS) >= 5, timeout=20)
        await anyio.sleep(0.5)  # a late double-fire would land now
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=15) for p in procs]
    ran = Counter(str(text(x)).split("|")[0] for x in r.lrange(TICKS, 0, -1))
    log = [str(text(x)).split("|") for x in r.lrange("aq:{default}:cronlog", 0, -1)]
    r.close()
    assert codes == [0, 0, 0]
    # Each tick was enqueued once (the log holds each tick once, one task each), and each
    # of those tasks ran once: judged by tick, not by when a busy machine enqueued it.
    ticks = Counter(int(tick) for entry, tick, _ in log if entry == "cron-app:every-second")
    assert set(ticks.values()) == {1}, ticks
    seconds = sorted(t // 1000 for t in ticks)
    assert seconds == list(range(seconds[0], seconds[-1] + 1))
    task_ids = {task_id for _, _, task_id in log}
    assert set(ran) <= task_ids, (ran, task_ids)
    assert set(ran.values()) == {1}, ran
