"""Queues nobody serves and task types nobody handles are never silent: a worker built
without ``queues=`` serves every queue its mux's handlers name; one given ``queues=``
that leaves some out says so once at start; ``aqueue stats`` (and the dashboard, see
test_web_oncall.py) flags pending tasks no live worker serves, and task types a worker
claimed but had no handler for."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import anyio
import pytest

import aqueue
from aqueue import Context, Mux, Worker
from aqueue import _minutes as minutes
from aqueue._reads import read_unknown_types, unknown_types_key

from .helpers import araw_client, wait_for
from .test_cli_admin import aqueue_cli

pytestmark = pytest.mark.anyio

mux = Mux()
ran: list[str] = []


@mux.task("alert:page", queue="critical")
async def page(ctx: Context, who: str) -> None:
    ran.append(f"critical:{who}")


@mux.task("export:csv", queue="bulk")
async def export(ctx: Context, who: str) -> None:
    ran.append(f"bulk:{who}")


@mux.task("report:")  # a prefix pattern names its queue too
async def report(ctx: Context, who: str) -> None:
    ran.append(f"reports:{who}")


mux.handle("report:daily", report.fn, queue="reports")


def test_worker_without_queues_serves_every_queue_its_handlers_name_and_default() -> None:
    worker = Worker(mux, "redis://127.0.0.1:1/0")
    assert worker.queues == {"bulk": 1.0, "critical": 1.0, "default": 1.0, "reports": 1.0}
    # A mux whose handlers all use default serves default alone, as before.
    assert Worker(Mux(), "redis://127.0.0.1:1/0").queues == {"default": 1.0}
    # Given queues are served as given.
    assert Worker(mux, "redis://127.0.0.1:1/0", queues=["bulk"]).queues == {"bulk": 1.0}


async def test_default_worker_runs_the_tasks_of_every_handler_queue(
    aqueue_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    ran.clear()
    async with aqueue.Client(aqueue_url) as client:
        await client.enqueue(page, "ada")
        await client.enqueue(export, "bob")
        await client.enqueue("report:daily", "cy", queue="reports")
    with caplog.at_level(logging.INFO, logger="aqueue.worker"):
        async with Worker(mux, aqueue_url):
            await wait_for(lambda: len(ran) == 3)
    assert sorted(ran) == ["bulk:bob", "critical:ada", "reports:cy"]
    serving = [m for m in caplog.messages if "serving queues" in m]
    assert len(serving) == 1
    assert "'critical': 1.0" in serving[0]
    assert serving[0].endswith("(the queues its mux's handlers name)")
    assert not _unserved_warnings(caplog)


async def test_worker_given_queues_warns_once_naming_each_handler_queue_it_leaves_out(
    aqueue_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="aqueue.worker"):
        async with Worker(mux, aqueue_url, queues={"critical": 3, "low": 1}):
            pass
    warnings = _unserved_warnings(caplog)
    assert len(warnings) == 1, warnings
    (line,) = warnings
    assert "does not serve queue(s) bulk, default, reports, named by its mux's handlers" in line
    assert "critical" not in line.split("named by")[0]
    assert "\n" not in line


async def test_worker_serving_every_handler_queue_warns_nothing(
    aqueue_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="aqueue.worker"):
        async with Worker(mux, aqueue_url, queues=["bulk", "critical", "default", "reports"]):
            pass
    assert not _unserved_warnings(caplog)


async def test_stats_flags_pending_tasks_that_no_live_worker_serves(url: str) -> None:
    async with aqueue.Client(url) as client:
        await client.enqueue_many([aqueue.Job("t", n, queue="orphans") for n in range(2)])
        await client.enqueue("t", queue="quiet", process_in=3600)  # nothing pending
        await client.enqueue("slow", queue="served")
    blocked, release = anyio.Event(), anyio.Event()
    busy = Mux()

    @busy.task("slow", queue="served")
    async def slow(ctx: Context) -> None:
        blocked.set()
        await release.wait()

    async with Worker(busy, url):
        await blocked.wait()
        result = await aqueue_cli("stats", url=url)
        as_json = (await aqueue_cli("stats", "--json", url=url)).json()
        release.set()
    assert result.code == 0, result.err
    warnings = [line for line in result.out.splitlines() if line.startswith("WARNING")]
    assert warnings == ["WARNING: no live worker serves orphans (2 pending)."]
    assert {q["queue"]: q["served"] for q in as_json} == {
        "default": True,  # registered by the worker, which serves it too
        "orphans": False,
        "quiet": False,
        "served": True,
    }


async def test_unknown_task_types_are_noted_by_the_worker_and_flagged_by_stats(
    url: str,
) -> None:
    async with aqueue.Client(url) as client:
        lost = await client.enqueue("invoice:legacy", {"n": 1})
        await client.enqueue("invoice:legacy", {"n": 2})
    async with aqueue.Inspector(url) as inspector, Worker(mux, url, queues=["default"]):
        # Retried, not archived (a newer worker may know the type), and noted.
        await wait_for(lambda: _state(inspector, lost.id, "retry"))
        seen = await read_unknown_types(inspector.broker, ["default", "critical"])
    assert list(seen) == ["default"]
    assert list(seen["default"]) == ["invoice:legacy"]
    assert datetime.now(UTC) - seen["default"]["invoice:legacy"] < timedelta(seconds=30)
    # Two tasks of the type, one note: kept a day after the last one.
    r = araw_client(url)
    try:
        key = unknown_types_key("aq", "default")
        assert await r.hlen(key) == 1
        assert 0 < await r.pttl(key) <= 86_400_000
    finally:
        await r.aclose()

    result = await aqueue_cli("stats", url=url)
    assert result.code == 0, result.err
    warnings = [line for line in result.out.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, result.out
    assert warnings[0].startswith(
        "WARNING: queue default has tasks of type(s) no worker has a handler for, retried "
        "until one does: invoice:legacy (last seen "
    )
    as_json = (await aqueue_cli("stats", "--json", url=url)).json()
    assert list(as_json[0]["unknown_types"]) == ["invoice:legacy"]


async def _state(inspector: aqueue.Inspector, task_id: str, state: str) -> bool:
    return (await inspector.get_task("default", task_id)).state == state


def _unserved_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "does not serve" in r.getMessage()
    ]


async def test_deleting_a_queue_deletes_the_notes_kept_beside_it(aqueue_url: str) -> None:
    async with aqueue.Client(aqueue_url) as client:
        task = await client.enqueue("invoice:legacy", queue="old")
    async with aqueue.Inspector(aqueue_url) as inspector:
        async with Worker(Mux(), aqueue_url, queues=["old"]):
            await wait_for(lambda: _noted(inspector, "old"))
        await minutes.record(inspector.broker, [await inspector.queue_info("old")])
        await inspector.delete_task("old", task.id)
        await inspector.delete_queue("old")
        r = araw_client(aqueue_url)
        try:
            assert await r.keys("*old*") == []
        finally:
            await r.aclose()


async def _noted(inspector: aqueue.Inspector, queue: str) -> bool:
    return bool(await read_unknown_types(inspector.broker, [queue]))
