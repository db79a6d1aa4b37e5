"""Housekeeping: retention, archive caps, unique lock lifecycle, task id reuse, no leaks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import aqueue
from aqueue import Context, Job, Mux, Worker
from aqueue.testing import drain

from .helpers import Peek, wait_for

pytestmark = pytest.mark.anyio

mux = Mux()


@mux.task("ok")
async def ok(ctx: Context, n: int) -> int:
    return n


@mux.task("bad", max_retry=0)
async def bad(ctx: Context, n: int) -> None:
    raise ValueError(n)


@mux.task("gone")
async def gone(ctx: Context, n: int) -> None:
    raise aqueue.Revoke()


# The janitor runs with the reaper, every min(lease_ttl, 5) s: a short lease keeps
# these tests quick.
FAST: dict[str, Any] = {"lease_ttl": 0.5}


@pytest.fixture
async def peek(url: str) -> AsyncIterator[Peek]:
    p = Peek(url)
    yield p
    await p.close()


async def sizes(peek: Peek) -> dict[str, int]:
    k = peek.k
    pipe = peek.r.pipeline(transaction=False)
    for h in ("tasks", "states", "retried", "errors", "failed_at", "results", "progress", "uniq"):
        pipe.hlen(k + h)
    for z in ("completed", "archived", "scheduled", "retry", "uniq_exp"):
        pipe.zcard(k + z)
    pipe.scard(k + "cancels")
    pipe.llen(k + "pending")
    names = ["tasks", "states", "retried", "errors", "failed_at", "results", "progress", "uniq"]
    names += ["completed", "archived", "scheduled", "retry", "uniq_exp", "cancels", "pending"]
    return dict(zip(names, [int(x) for x in await pipe.execute()], strict=True))


async def test_completed_tasks_are_deleted_when_their_retention_ends(url: str, peek: Peek) -> None:
    async with aqueue.Client(url) as client:
        infos = await client.enqueue_many([Job(ok, i, retention=0.5) for i in range(50)])
        await drain(mux, url, **FAST)
        assert (await sizes(peek))["completed"] == 50
        with pytest.raises(aqueue.TaskIdConflict, match="completed"):
            await client.enqueue(ok, 1, task_id=infos[0].id)
        async with Worker(mux, url, **FAST):
            await wait_for(lambda: _size_is(peek, "states", 0), timeout=10)
        # The retention ended: the id is free again.
        again = await client.enqueue(ok, 1, task_id=infos[0].id)
    assert again.id == infos[0].id
    left = await sizes(peek)
    assert left["completed"] == 0
    assert left["results"] == 0


async def test_archive_is_capped_by_size_and_by_age(url: str, peek: Peek) -> None:
    async with aqueue.Client(url) as client:
        await client.enqueue_many([Job(bad, i) for i in range(30)])
    await drain(mux, url, max_archived=10, **FAST)
    async with Worker(mux, url, max_archived=10, **FAST):
        await wait_for(lambda: _size_is(peek, "archived", 10), timeout=10)
    left = await sizes(peek)
    # The trimmed tasks' data went with them.
    assert left["tasks"] == left["states"] == left["errors"] == left["failed_at"] == 10
    async with Worker(mux, url, archive_ttl=0.1, **FAST):
        await wait_for(lambda: _size_is(peek, "archived", 0), timeout=10)
    assert (await sizes(peek))["tasks"] == 0


async def test_unique_lock_is_released_by_every_final_state(url: str) -> None:
    async with aqueue.Client(url) as client:
        await client.enqueue(ok, 1, unique=3600)
        await client.enqueue(bad, 1, unique=3600)
        await client.enqueue(gone, 1, unique=3600)
        cancelled = await client.enqueue(ok, 2, unique=3600)
        await client.cancel("default", cancelled.id)
        await drain(mux, url, **FAST)
        # Success, archive, revoke and cancel each released their lock.
        for handler in (ok, bad, gone):
            await client.enqueue(handler, 1, unique=3600)
        await client.enqueue(ok, 2, unique=3600)


async def test_an_expired_unique_lock_is_swept(url: str, peek: Peek) -> None:
    async with aqueue.Client(url) as client:
        await client.enqueue(ok, 1, unique=0.2, process_in=3600)
    async with Worker(mux, url, **FAST):
        await wait_for(lambda: _size_is(peek, "uniq", 0), timeout=10)
    assert (await sizes(peek))["uniq_exp"] == 0


async def test_no_key_or_field_leaks_after_a_churn_of_10000_tasks(aqueue_url: str) -> None:
    peek = Peek(aqueue_url)
    jobs: list[Job[Any]] = []
    for i in range(10_000):
        kind = i % 10
        if kind < 5:
            jobs.append(Job(ok, i))  # deleted on success
        elif kind < 7:
            jobs.append(Job(ok, i, retention=0.5, unique=3600))  # kept, then expired
        elif kind < 8:
            jobs.append(Job(bad, i, unique=3600))  # archived, then trimmed
        elif kind < 9:
            jobs.append(Job(gone, i, headers={"h": "v"}))  # revoked
        else:
            jobs.append(Job(ok, i, retention=0.5, queue="other"))
    async with aqueue.Client(aqueue_url) as client:
        for start in range(0, len(jobs), 2000):
            await client.enqueue_many(jobs[start : start + 2000])
    options: dict[str, Any] = {"concurrency": 100, "max_archived": 100, **FAST}
    await drain(mux, aqueue_url, queues=["default", "other"], timeout=60, **options)
    async with Worker(mux, aqueue_url, queues=["default", "other"], **options):
        await wait_for(lambda: _settled(peek), timeout=20)
    left = await sizes(peek)
    # A queue's bell holds one token at most, or none once an idle worker took it.
    keys = sorted(str(k) for k in await peek.r.keys("*") if not str(k).endswith(":bell"))
    await peek.close()
    assert left["archived"] == left["tasks"] == left["states"] == 100
    assert left["completed"] == left["results"] == left["uniq"] == left["uniq_exp"] == 0
    assert left["pending"] == left["retry"] == left["cancels"] == 0
    # Fixed per-queue keys only: no key per task, no lease left behind.
    assert keys == [
        "aq:queues",
        "aq:{default}:archived",
        "aq:{default}:errors",
        "aq:{default}:failed_at",
        "aq:{default}:states",
        "aq:{default}:stats",
        "aq:{default}:tasks",
        "aq:{other}:stats",
    ]


async def _settled(peek: Peek) -> bool:
    s = await sizes(peek)
    other = await peek.r.hlen("aq:{other}:states")
    return s["states"] == 100 and s["completed"] == 0 and s["uniq"] == 0 and other == 0


async def _size_is(peek: Peek, name: str, n: int) -> bool:
    return (await sizes(peek))[name] == n
