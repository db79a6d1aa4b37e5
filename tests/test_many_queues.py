"""A worker serving many queues (docs/architecture.md, "Background loops"): an idle
worker's cost does not grow with the number of queues it serves, a task in any of them
starts at once, a delayed one on time, and a dead worker's tasks come back within one
reaper pass of its lease's end, found through the lease index (a pass that looked at
every queue's leases would take as long; one that looks at a few in turn, much
longer)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import redis
import redis.asyncio as aioredis

import aqueue
from aqueue._worker.claims import RECHECK

from .helpers import araw_client, is_cluster, text, wait_for

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
MANY = 200


def _queues(n: int) -> dict[str, float]:
    return {f"m{i}": 1 for i in range(n)}


def _mux(starts: list[tuple[str, float]]) -> aqueue.Mux:
    mux = aqueue.Mux()

    @mux.task("mq:mark")
    async def mark(ctx: aqueue.Context) -> None:
        starts.append((ctx.task_id, time.time()))

    return mux


async def _commands(r: aioredis.Redis) -> int:
    stats = await r.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


async def _idle_commands(url: str, queues: int, seconds: float) -> int:
    """The commands the server ran while one worker serving ``queues`` queues idled."""
    async with aqueue.Worker(_mux([]), url, queues=_queues(queues), concurrency=10):
        await anyio.sleep(3.0)  # past the start: declarations, the first passes
        async with araw_client(url) as r:
            before = await _commands(r)
            await anyio.sleep(seconds)
            return await _commands(r) - before


async def test_an_idle_workers_commands_do_not_grow_with_its_queues(aqueue_url: str) -> None:
    """Counted by the server (commands inside scripts included) over the same idle
    seconds: 240 queues cost about what 60 do, not four times it. Past 50 queues the
    passes look at a slice in turn; what still grows is the lease renewal, two commands
    per queue every lease_ttl / 3 inside one script call."""
    seconds = 6.0
    few = await _idle_commands(aqueue_url, 60, seconds)
    many = await _idle_commands(aqueue_url, 240, seconds)
    renewals = 2 * (240 - 60) * seconds / (30 / 3)
    assert many < 1.3 * few + renewals + 100, (few, many)


async def test_a_task_in_any_of_many_queues_starts_at_once(url: str) -> None:
    if is_cluster(url):
        pytest.skip("single server only: a cluster's bells are in different slots")
    starts: list[tuple[str, float]] = []
    queues = _queues(MANY)
    async with (
        aqueue.Client(url) as client,
        aqueue.Worker(_mux(starts), url, queues=queues, concurrency=10),
    ):
        await anyio.sleep(1.5)  # every queue found dry once
        for q in random.sample(list(queues), 20):
            sent = time.time()
            info = await client.enqueue("mq:mark", queue=q)
            await wait_for(lambda i=info.id: any(s[0] == i for s in starts), timeout=10)  # type: ignore[misc]
            started = next(t for i, t in starts if i == info.id)
            # Its bell woke the worker: well under the 1 s blocking wait, let alone the
            # time to look at 200 dry queues RECHECK at a time.
            assert started - sent < 0.5, (q, started - sent)


async def test_a_delayed_task_in_any_of_many_queues_runs_on_time(url: str) -> None:
    if is_cluster(url):
        pytest.skip("single server only: a cluster's bells are in different slots")
    starts: list[tuple[str, float]] = []
    async with (
        aqueue.Client(url) as client,
        aqueue.Worker(_mux(starts), url, queues=_queues(MANY), concurrency=10),
    ):
        await anyio.sleep(1.5)
        due = time.time() + 1.0
        info = await client.enqueue("mq:mark", queue="m137", process_in=due - time.time())
        await wait_for(lambda: bool(starts), timeout=10)
    assert starts[0][0] == info.id
    assert starts[0][1] - due < 0.5  # its notice named the queue: no pass over all 200


async def test_a_resumed_queue_among_many_starts_at_once(url: str) -> None:
    """Paused, a queue's claims come back short and the worker waits for its bell: the
    resume rings it."""
    if is_cluster(url):
        pytest.skip("single server only: a cluster's bells are in different slots")
    starts: list[tuple[str, float]] = []
    async with (
        aqueue.Client(url) as client,
        aqueue.Inspector(url) as inspector,
        aqueue.Worker(_mux(starts), url, queues=_queues(MANY), concurrency=10),
    ):
        await inspector.pause("m77")
        info = await client.enqueue("mq:mark", queue="m77")
        await anyio.sleep(1.5)  # claimed from while paused: dry
        assert starts == []
        resumed = time.time()
        await inspector.resume("m77")
        await wait_for(lambda: bool(starts), timeout=10)
    assert starts[0][0] == info.id
    # Within the 1 s a paused claim keeps the queue aside, plus the blocking wait: not
    # the round robin over 200 dry queues (25 s).
    assert starts[0][1] - resumed < 3.0


async def test_a_bell_nobody_hears_is_found_by_looking_again(aqueue_url: str) -> None:
    """A worker that died between popping a queue's bell and claiming: the task waits
    for the round robin that looks at a few dry queues each idle second."""
    url = aqueue_url
    starts: list[tuple[str, float]] = []
    mux = _mux(starts)

    @mux.task("mq:nap")
    async def nap(ctx: aqueue.Context, seconds: float) -> None:
        await anyio.sleep(seconds)

    queues = _queues(24)
    async with (
        aqueue.Client(url) as client,
        araw_client(url) as r,
        aqueue.Worker(mux, url, queues=queues, concurrency=1),
    ):
        await anyio.sleep(1.5)  # every queue found dry
        # The one slot busy: nobody blocks on the bells meanwhile.
        await client.enqueue("mq:nap", 1.0, queue="m0")
        await anyio.sleep(0.3)
        info = await client.enqueue("mq:mark", queue="m5")
        # A worker pops the bell and dies before it claims.
        assert await r.lpop("aq:{m5}:bell") is not None
        await wait_for(lambda: bool(starts), timeout=10 + len(queues) / RECHECK)
    assert starts[0][0] == info.id


@contextmanager
def _worker(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "aqueue._cli", "worker", "tests.apps.many_queues_app:worker"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


async def test_a_dead_workers_task_in_one_of_many_queues_comes_back_by_the_lease_index(
    url: str, aqueue_url: str
) -> None:
    """SIGKILL the worker holding a task in the 180th of 200 queues; another worker's
    reaper learns of the death from the lease index and looks at every queue's leases
    at once: the task runs again within the lease plus a pass or two. The reapers here
    look at one queue a pass otherwise (MQ_LOOK=1): without the index, 180 passes."""
    records = redis.Redis.from_url(aqueue_url)
    records.flushdb()
    env = {
        **os.environ, "AQUEUE_URL": url, "MQ_RECORDS": aqueue_url, "MQ_LEASE_TTL": "2",
        "MQ_LOOK": "1",
    }  # fmt: skip
    try:
        async with aqueue.Client(url) as client:
            info = await client.enqueue("mq:hold", 30.0, queue="m180", max_retry=3)
            with _worker(env) as doomed:
                await wait_for(lambda: records.llen("mq:starts") == 1, timeout=20)
                doomed.send_signal(signal.SIGKILL)
                doomed.wait(timeout=10)
                killed = time.time()
            await client.enqueue("mq:mark", queue="m0")  # the survivor's first task
            with _worker(env):
                await wait_for(lambda: records.llen("mq:starts") >= 3, timeout=30)
        rows: list[Any] = [str(text(x)).split("|") for x in records.lrange("mq:starts", 0, -1)]
    finally:
        records.close()
    again = [row for row in rows if row[0] == info.id]
    assert [row[2] for row in again] == ["0", "1"]  # ran again once, an attempt counted
    # Lease 2 s, reaper passes every 1-2 s (min(lease_ttl, 5) with jitter), and the new
    # worker's start: generous, yet far below 180 passes, and the 30 s the handler slept.
    assert float(again[1][3]) - killed < 15, float(again[1][3]) - killed
