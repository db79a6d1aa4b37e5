"""Delayed tasks: on time, without polling."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import anyio
import pytest

import aqueue
from aqueue import Context, Mux, Worker

from .helpers import wait_for

pytestmark = pytest.mark.anyio


async def test_delayed_tasks_start_within_100_ms_of_their_time(url: str) -> None:
    mux = Mux()
    late: list[float] = []

    @mux.task("at")
    async def at(ctx: Context, due: float) -> None:
        late.append(time.time() - due)

    async with Worker(mux, url), aqueue.Client(url) as client:
        # The worker is idle and its forwarder asleep (nothing is due) when each task is
        # written: only the wake-up makes these punctual.
        await anyio.sleep(0.2)
        for delay in (0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.3, 1.7, 2.2, 2.6):
            due = datetime.now(UTC) + timedelta(seconds=delay)
            await client.enqueue(at, due.timestamp(), process_at=due)
        await wait_for(lambda: len(late) == 10, timeout=15)
    worst = max(late)
    print(f"delayed-task lateness: max {worst * 1000:.1f} ms, min {min(late) * 1000:.1f} ms")
    assert min(late) >= 0  # never early
    assert worst < 0.1


async def test_a_retry_is_forwarded_on_time_too(url: str) -> None:
    mux = Mux()
    runs: list[float] = []

    @mux.task("again")
    async def again(ctx: Context) -> None:
        runs.append(time.time())
        if len(runs) == 1:
            raise aqueue.Retry(0.5)

    async with Worker(mux, url), aqueue.Client(url) as client:
        await client.enqueue(again)
        await wait_for(lambda: len(runs) == 2, timeout=10)
    gap = runs[1] - runs[0]
    assert 0.5 <= gap < 0.6, gap
