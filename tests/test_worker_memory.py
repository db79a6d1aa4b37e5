"""A worker under load keeps no finished task alive: its memory stays flat without
waiting for Python's cycle collector (a reference cycle per task once held megabytes)."""

from __future__ import annotations

import gc

import pytest

import aqueue
from aqueue import Context, Mux
from aqueue._worker.runner import Claimed
from aqueue.testing import drain

pytestmark = pytest.mark.anyio


async def test_finished_tasks_are_freed_by_reference_counting_alone(aqueue_url: str) -> None:
    mux = Mux()
    seen: list[str] = []

    @mux.task("t")
    async def t(ctx: Context) -> None:
        seen.append(ctx.task_id)

    @mux.task("reports")
    async def reports(ctx: Context) -> None:
        await ctx.progress(50)  # the progress sink is the part that once made a cycle

    async with aqueue.Client(aqueue_url) as client:
        await client.enqueue_many([aqueue.Job(t) for _ in range(300)])
        await client.enqueue_many([aqueue.Job(reports) for _ in range(50)])
    gc.collect()
    gc.disable()
    try:
        await drain(mux, aqueue_url, concurrency=20)
        alive = sum(isinstance(o, Claimed) for o in gc.get_objects())
    finally:
        gc.enable()
    assert len(seen) == 300
    assert alive == 0
