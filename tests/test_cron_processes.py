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
    items = [str(text(x)).split("|") for x in r.lrange(TICKS, 0, -1)]
    r.close()
    assert codes == [0, 0, 0]
    per_second = Counter(int(second) for second, _ in items)
    assert set(per_second.values()) == {1}, per_second
    seconds = sorted(per_second)
    assert seconds == list(range(seconds[0], seconds[-1] + 1))
