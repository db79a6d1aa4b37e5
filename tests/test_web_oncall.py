"""The dashboard for whoever is on call, against real servers: queues whose pending
tasks no live worker serves and task types no worker handles are flagged; a task is
found by id in any queue, and a queue's tasks by type; the last hour is charted minute
by minute from the samples readers keep; the workers page shows each worker's last
heartbeat and since when each task runs, and an active task names its worker; the cron
page links a last run only while its task exists. One test drives it in Chromium."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from starlette.testclient import TestClient

import aqueue
from aqueue import Context, Mux, Worker
from aqueue import _minutes as minutes
from aqueue._minutes import Minute, Sample, per_minute, total
from aqueue._reads import read_live_workers
from aqueue._task import QueueInfo
from aqueue.testing import drain
from aqueue.web import dashboard

from .helpers import wait_for
from .test_web import table
from .test_web_e2e import ARGS, CHROMIUM, served

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]

__all__ = ["served"]  # the fixture, for the Chromium test

T = TypeVar("T")


def page_text(url: str, path: str) -> str:
    with TestClient(dashboard(url)) as http:
        response = http.get(path)
        assert response.status_code == 200, response.text
        return response.text


async def in_thread(fn: Callable[[], T]) -> T:
    """Run a blocking call (a TestClient request) while this loop serves a worker."""
    return await anyio.to_thread.run_sync(fn)


def hhmm(minute: int) -> str:
    return time.strftime("%H:%M", time.gmtime(minute * 60))


# -- queues nobody serves, types nobody handles ------------------------------------------


def test_overview_flags_a_queue_whose_pending_tasks_no_live_worker_serves(url: str) -> None:
    busy = Mux()
    started = anyio.Event()

    @busy.task("slow", queue="served")
    async def slow(ctx: Context) -> None:
        started.set()
        await anyio.sleep(3600)

    async def main() -> str:
        async with aqueue.Client(url) as client:
            await client.enqueue_many([aqueue.Job("t", n, queue="orphans") for n in range(3)])
            await client.enqueue(slow)
            await client.enqueue(slow)  # pending behind the first: served, not flagged
        async with Worker(busy, url, concurrency=1, shutdown_timeout=0):
            await started.wait()
            return await in_thread(lambda: page_text(url, "/"))

    page = anyio.run(main)
    assert re.findall(r'data-unserved="([^"]+)"', page) == ["orphans"]
    assert "No live worker serves" in page and "3 pending task(s) wait" in page
    assert '<tr data-queue="orphans" class="unserved"' in page
    assert '<tr data-queue="served">' in page


def test_dashboard_shows_task_types_no_worker_has_a_handler_for(aqueue_url: str) -> None:
    async def main() -> None:
        async with aqueue.Client(aqueue_url) as client:
            legacy = await client.enqueue("invoice:legacy", {"n": 1})
        async with aqueue.Inspector(aqueue_url) as inspector, Worker(Mux(), aqueue_url):

            async def retried() -> bool:
                return (await inspector.get_task("default", legacy.id)).state == "retry"

            await wait_for(retried)

    anyio.run(main)
    for path in ("/", "/queues/default"):
        page = page_text(aqueue_url, path)
        assert 'data-unknown="default"' in page
        assert re.search(r'<b class="mono">invoice:legacy</b> <small>last seen \d+ms ago', page)


# -- search -------------------------------------------------------------------------------


def test_search_finds_a_task_by_id_in_any_queue(aqueue_url: str) -> None:
    async def main() -> tuple[str, str]:
        async with aqueue.Client(aqueue_url) as client:
            await client.enqueue("t", 1, queue="alpha")
            task = await client.enqueue("t", 2, queue="beta")
            await client.enqueue("t", 3, queue="alpha", task_id="twice")
            await client.enqueue("t", 4, queue="beta", task_id="twice")
        return task.id, task.queue

    task_id, queue = anyio.run(main)
    with TestClient(dashboard(aqueue_url), follow_redirects=False) as http:
        found = http.get(f"/search?id={task_id}")
        assert found.status_code == 303
        assert found.headers["location"] == f"/queues/{queue}/tasks/{task_id}"
        # Asked within one queue: only there.
        assert http.get(f"/search?id={task_id}&queue=alpha").status_code == 404
        missing = http.get("/search?id=nope")
        assert missing.status_code == 404
        assert "no task &#39;nope&#39; in any queue" in missing.text
        # The same id in two queues: a list to choose from.
        both = http.get("/search?id=twice")
        assert both.status_code == 200
        assert list(table(both.text, "found")) == ["alpha", "beta"]
        assert http.get("/search?id=").status_code == 400


def test_queue_page_filters_its_listed_tasks_by_type(aqueue_url: str) -> None:
    async def main() -> None:
        async with aqueue.Client(aqueue_url) as client:
            jobs: list[aqueue.Job[Any]] = [
                aqueue.Job("email:send" if n % 3 else "image:resize", n, queue="mixed")
                for n in range(60)
            ]
            await client.enqueue_many([*jobs, aqueue.Job("email:digest", 0, queue="mixed")])

    anyio.run(main)
    with TestClient(dashboard(aqueue_url)) as http:
        first = http.get("/queues/mixed?state=pending&type=email:send")
        rows = table(first.text, "tasks")
        assert len(rows) == 20 and {r[0] for r in rows.values()} == {"email:send"}
        assert "40 pending task(s) of type" in first.text
        assert "page 1 of 2" in first.text
        assert "state=pending&amp;type=email%3Asend&amp;page=2" in first.text
        second = table(http.get("/queues/mixed?state=pending&type=email:send&page=2").text, "tasks")
        assert len(second) == 20 and not set(second) & set(rows)
        # A name ending in ":" is a prefix, as in a Mux.
        prefix = http.get("/queues/mixed?state=pending&type=email:").text
        assert "41 pending task(s) of type" in prefix
        none = http.get("/queues/mixed?state=archived&type=email:send").text
        assert "No archived tasks of type email:send." in none


# -- the last hour, per minute ------------------------------------------------------------


def test_per_minute_rates_come_from_consecutive_samples_and_gaps_stay_gaps() -> None:
    now = 1_000 * 60_000 + 30_000  # half past minute 1000

    def at(minute: int, second: int = 0) -> int:
        return minute * 60_000 + second * 1000

    samples = [
        Sample(at(990, 50), 100, 2, 5, 1),
        Sample(at(991, 50), 160, 2, 7, 1),  # 60 processed in one minute
        Sample(at(993, 20), 250, 5, 9, 2),  # after a gap: 90 in 1.5 minutes
        Sample(at(1000, 0), 10, 0, 0, 0),  # counters went back (queue deleted): no rate
        Sample(at(1000 - minutes.SLOTS, 0), 0, 0, 0, 0),  # an earlier lap of the ring
    ]
    series = {m.minute: m for m in per_minute(samples, now)}
    assert len(series) == minutes.SPAN and max(series) == 1000
    assert series[990] == Minute(990, None, None, 5, 1)  # no sample before it
    assert series[991] == Minute(991, 60.0, 0.0, 7, 1)
    assert series[992] == Minute(992)  # no sample: a gap, not a zero
    assert series[993] == Minute(993, 60.0, 2.0, 9, 2)
    assert series[1000] == Minute(1000, None, None, 0, 0)
    # Too long since the previous sample: a depth, no rate.
    late = per_minute([Sample(at(990), 0, 0, 1, 0), Sample(at(996), 600, 0, 2, 0)], now)
    assert {m.minute: m.processed for m in late if m.pending is not None} == {990: None, 996: None}
    summed = total([per_minute(samples, now), per_minute(samples[:2], now)])
    assert summed[-10] == Minute(991, 120.0, 0.0, 14, 2)
    assert summed[-8] == Minute(993, 60.0, 2.0, 9, 2)


def test_overview_and_queue_page_chart_the_last_hour_from_the_samples(url: str) -> None:
    now = int(time.time() * 1000)
    two, three = (now - 120_000) // 60_000, (now - 180_000) // 60_000

    async def main() -> None:
        async with aqueue.Client(url) as client:
            await client.enqueue("t", queue="work")
        async with aqueue.Inspector(url) as inspector:
            b = inspector.broker
            await minutes.record(b, [QueueInfo(queue="work", pending=2)], now - 180_000)
            sample = QueueInfo(queue="work", processed_total=120, failed_total=6, pending=7)
            await minutes.record(b, [sample], now - 120_000)

    anyio.run(main)
    for path in ("/", "/queues/work"):
        page = page_text(url, path)
        assert f"<title>{hhmm(two)}: 120 processed/min</title>" in page
        assert f"<title>{hhmm(two)}: 6 failed/min</title>" in page
        assert f"<title>{hhmm(two)}: 7 pending</title>" in page
        assert f"<title>{hhmm(three)}: 2 pending</title>" in page
        # This page view kept a sample of its own: the current minute's depth.
        assert f"<title>{hhmm(now // 60_000)}: 1 pending</title>" in page or (
            f"<title>{hhmm(now // 60_000 + 1)}: 1 pending</title>" in page
        )


def test_metrics_collector_keeps_a_sample_per_queue_for_the_chart(aqueue_url: str) -> None:
    from prometheus_client import CollectorRegistry

    from aqueue.metrics import QueueCollector

    async def main() -> list[Minute]:
        async with aqueue.Client(aqueue_url) as client:
            await client.enqueue("t", queue="work")
        collector = QueueCollector(aqueue_url, registry=CollectorRegistry())
        try:
            await collector.refresh()
        finally:
            await collector.inspector.close()
        async with aqueue.Inspector(aqueue_url) as inspector:
            return (await minutes.read(inspector.broker, ["work"]))["work"]

    series = anyio.run(main)
    assert series[-1].pending == 1 or series[-2].pending == 1


# -- workers, active tasks, cron ----------------------------------------------------------


def test_workers_page_and_active_task_show_heartbeat_and_since_when(url: str) -> None:
    busy = Mux()
    started = anyio.Event()

    @busy.task("slow", queue="slow")
    async def slow(ctx: Context) -> None:
        started.set()
        await anyio.sleep(3600)

    async def main() -> tuple[str, str, str, str]:
        async with aqueue.Client(url) as client:
            task = await client.enqueue(slow)
        worker = Worker(busy, url, queues=["slow"], lease_ttl=0.6, shutdown_timeout=0)
        async with aqueue.Inspector(url) as inspector, worker:
            await started.wait()

            async def published() -> bool:  # by a heartbeat after the claim
                live = await read_live_workers(inspector.broker)
                return bool(live and live[0].claimed_at)

            await wait_for(published)
            workers = await in_thread(lambda: page_text(url, "/workers"))
            page = await in_thread(lambda: page_text(url, f"/queues/slow/tasks/{task.id}"))
        return workers, page, task.id, worker.id

    workers, page, task_id, worker_id = anyio.run(main)
    assert re.search(r"last heartbeat \d+ms ago", workers)
    assert re.search(r'<section class="worker" id="' + worker_id, workers)
    assert re.search(
        task_id + r"</a></td>.*<td title=\"\d{4}-\d\d-\d\d [^\"]+\">[\d.]+m?s ago</td>", workers
    )
    holder = re.search(r'<dd id="holder">(.*?)</dd>', page)
    assert holder is not None
    assert f">{worker_id}</a> on " in holder.group(1)
    assert re.search(
        r", since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC <small>[\d.]+m?s ago", holder.group(1)
    )


def test_cron_page_links_a_last_run_only_while_its_task_exists(aqueue_url: str) -> None:
    crons = Mux()
    ran: list[str] = []

    @crons.cron("* * * * * *", name="forgotten", queue="ticks")  # retention 0: deleted
    async def forgotten(ctx: Context) -> None:
        ran.append("forgotten")

    @crons.cron("* * * * * *", name="kept", queue="ticks", retention=600)
    async def kept(ctx: Context) -> None:
        ran.append("kept")

    async def main() -> None:
        async with Worker(crons, aqueue_url):
            await wait_for(lambda: {"forgotten", "kept"} <= set(ran), timeout=10)
        # No scheduler from here on: the last ticks enqueued run, and no new one comes.
        await drain(crons, aqueue_url, queues=["ticks"], scheduler=False)

    anyio.run(main)
    page = page_text(aqueue_url, "/cron")
    rows = table(page, "cron")
    assert rows["kept"][-1].endswith("·task")
    assert rows["forgotten"][-1].endswith("·task gone")
    assert page.count("/queues/ticks/tasks/") == 1


# -- in a browser -------------------------------------------------------------------------


@pytest.mark.skipif(sync_playwright is None, reason="the playwright package is not installed")
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing")
def test_on_call_views_in_chromium(aqueue_url: str, served: str, tmp_path: Path) -> None:
    async def populate() -> str:
        async with aqueue.Client(aqueue_url) as client:
            jobs: list[aqueue.Job[Any]] = [
                aqueue.Job("email:send" if n % 2 else "image:resize", n, queue="orphans")
                for n in range(10)
            ]
            infos = await client.enqueue_many(jobs)
        return infos[3].id

    task_id = anyio.run(populate)
    assert sync_playwright is not None
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(served + "/")
            expect(page.locator(".alert[data-unserved=orphans]")).to_contain_text(
                "10 pending task(s) wait"
            )
            expect(page.locator("figure.minutes svg circle.pending")).not_to_have_count(0)
            page.screenshot(path=tmp_path / "overview.png", full_page=True)

            # Find a task by its id from the search box in the header.
            page.fill("form.search input", task_id)
            page.press("form.search input", "Enter")
            expect(page.locator("h1")).to_contain_text(task_id)
            expect(page).to_have_url(re.compile(f"/queues/orphans/tasks/{task_id}$"))

            # Filter a queue's tasks by type.
            page.goto(served + "/queues/orphans")
            page.fill("form.filter input[name=type]", "email:send")
            page.press("form.filter input[name=type]", "Enter")
            expect(page.locator("#tasks tbody tr")).to_have_count(5)
            expect(page.locator("#type-filter")).to_contain_text("5 pending task(s) of type")
            page.screenshot(path=tmp_path / "filtered.png", full_page=True)
        finally:
            browser.close()
