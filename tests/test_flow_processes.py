"""Flow control across worker processes: `aqueue worker` subprocesses share one limit
through the server, and a killed worker's slot comes back once its lease is reaped.

The handlers (tests/apps/flow_app.py) record their starts on a separate recording
server, in its clock, so the judgement never depends on which process saw what."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

import aqueue
from aqueue._redis.keys import queue_keys

from .apps.flow_app import Work
from .helpers import raw_client, text, wait_for

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]


class Starts:
    """The recorded starts of one task type: (server ms, n, tenant, running, retry)."""

    def __init__(self, r: redis.Redis, kind: str) -> None:
        self.r, self.kind = r, kind

    def all(self) -> list[tuple[int, int, str, int, int]]:
        out = []
        for raw in self.r.lrange(f"flowtest:starts:{self.kind}", 0, -1):
            ms, n, tenant, running, retry = str(text(raw)).split("|")
            out.append((int(ms), int(n), tenant, int(running), int(retry)))
        return out

    def done(self) -> int:
        return int(self.r.llen(f"flowtest:done:{self.kind}"))


@contextmanager
def workers(
    queue_url: str, records_url: str, n: int, target: str = "tests.apps.flow_app:mux"
) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = {**os.environ, "AQUEUE_URL": queue_url, "FLOWTEST_URL": records_url}
    command = [sys.executable, "-m", "aqueue._cli", "worker", target, "--concurrency", "4"]
    procs = [
        subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL) for _ in range(n)
    ]
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=20)


@asynccontextmanager
async def recording(aqueue_url: str) -> AsyncIterator[redis.Redis]:
    r = redis.Redis.from_url(aqueue_url)
    r.flushdb()
    try:
        yield r
    finally:
        r.close()


def _slots_in_use(url: str) -> dict[bytes, bytes]:
    r = raw_client(url)
    try:
        return dict(r.hgetall(queue_keys("aq", "default").running))  # type: ignore[arg-type]
    finally:
        r.close()


async def test_a_concurrency_limit_holds_across_worker_processes(url: str, aqueue_url: str) -> None:
    async with recording(aqueue_url) as r, aqueue.Client(url) as client:
        starts = Starts(r, "capped")
        await client.enqueue_many([aqueue.Job("capped", Work(i, hold=0.1)) for i in range(16)])
        with workers(url, aqueue_url, 2):
            await wait_for(lambda: starts.done() == 16, timeout=30)
        # Never more than 2 at once over 8 slots in two processes, and the 2 were used.
        assert max(s[3] for s in starts.all()) == 2
    assert _slots_in_use(url) == {}


async def test_a_rate_limit_holds_across_worker_processes(url: str, aqueue_url: str) -> None:
    async with recording(aqueue_url) as r, aqueue.Client(url) as client:
        starts = Starts(r, "rated")
        await client.enqueue_many([aqueue.Job("rated", Work(i)) for i in range(25)])
        with workers(url, aqueue_url, 2):
            await wait_for(lambda: starts.done() == 25, timeout=30)
        times = sorted(s[0] for s in starts.all())
    # At most 10 starts in any window of 1 s (server clock): the 11th after the 1st is
    # at least 1 s later; 25 starts need two full windows. A start is the claim; the
    # handler records it a few ms later, by a varying lag (hence the 30 ms).
    gaps = [times[i + 10] - times[i] for i in range(len(times) - 10)]
    assert min(gaps) >= 1000 - 30, times
    assert times[-1] - times[0] >= 2000 - 30


async def test_keys_share_turns_and_each_key_keeps_its_limit_across_processes(
    url: str, aqueue_url: str
) -> None:
    async with recording(aqueue_url) as r, aqueue.Client(url) as client:
        starts = Starts(r, "tenant")
        big: list[aqueue.Job[Any]] = [
            aqueue.Job("tenant", Work(i, "big", hold=0.05), limit_key="big") for i in range(12)
        ]
        small: list[aqueue.Job[Any]] = [
            aqueue.Job("tenant", Work(100 + i, t, hold=0.05), limit_key=t)
            for i, t in enumerate(["s1", "s2", "s1", "s2"])
        ]
        await client.enqueue_many(big)
        await client.enqueue_many(small)
        with workers(url, aqueue_url, 2):
            await wait_for(lambda: starts.done() == 16, timeout=30)
        seen = starts.all()
    # One at a time per tenant, tenants side by side.
    assert all(s[3] == 1 for s in seen), seen
    order = [s[2] for s in sorted(seen)]
    # The small tenants did not wait for the big one's backlog: both done within the
    # first rounds.
    last_small = max(i for i, t in enumerate(order) if t != "big")
    assert last_small < 8, order


async def test_a_killed_workers_slot_is_freed_when_its_lease_is_reaped(aqueue_url: str) -> None:
    url = aqueue_url
    async with recording(aqueue_url) as r, aqueue.Client(url) as client:
        starts = Starts(r, "single")
        held = await client.enqueue("single", Work(0, hold_first=60))
        waiting = await client.enqueue("single", Work(1))
        with workers(url, url, 1, "tests.apps.flow_app:short_lease") as (first,):
            await wait_for(lambda: len(starts.all()) == 1, timeout=20)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        killed = anyio.current_time()
        # The only slot is held by a dead worker: nobody may start `waiting` until the
        # reaper returns the lease (lease_ttl 2 s plus a reaper pass).
        with workers(url, url, 1, "tests.apps.flow_app:short_lease"):
            await wait_for(lambda: starts.done() == 2, timeout=30)
            freed_after = anyio.current_time() - killed
        seen = [(s[1], s[4]) for s in starts.all()]
        async with aqueue.Inspector(url) as inspector:
            assert (await inspector.queue_info("default")).pending == 0
    assert freed_after < 15
    # The killed attempt counted one retry; the held-back task used none.
    assert sorted(seen) == [(0, 0), (0, 1), (1, 0)], seen
    assert _slots_in_use(url) == {}
    assert held.id != waiting.id


async def test_tasks_behind_held_back_ones_run_at_once_across_processes(
    url: str, aqueue_url: str
) -> None:
    async with recording(aqueue_url) as r, aqueue.Client(url) as client:
        capped, free = Starts(r, "capped"), Starts(r, "free")
        # Six capped tasks (2 at a time, 3 s each) first, then twenty free ones behind.
        await client.enqueue_many([aqueue.Job("capped", Work(i, hold=3.0)) for i in range(6)])
        await client.enqueue_many([aqueue.Job("free", Work(100 + i)) for i in range(20)])
        with workers(url, aqueue_url, 2):
            await wait_for(lambda: free.done() == 20, timeout=20)
            # Every free task ran while the capped ones still wait their turn.
            assert len(capped.all()) == 2, capped.all()
            assert capped.done() == 0
            async with aqueue.Inspector(url) as inspector:
                waiting = await inspector.list_tasks("default", "pending")
        assert {t.type for t in waiting} == {"capped"}
        assert len(waiting) == 4
        assert all(t.retried == 0 for t in waiting)
