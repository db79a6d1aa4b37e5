"""The dashboard in a real browser: headless Chromium (Debian's package) driven by
Playwright, against the dashboard served by uvicorn on a real server.

Skipped, with the reason, when /usr/bin/chromium or the playwright package is missing;
CI installs both. Screenshots of each page land in the test's temporary folder (the
ones in docs/img/ are copies of them).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import pytest
import uvicorn

import aqueue
from aqueue import Inspector
from aqueue.testing import drain
from aqueue.web import dashboard

from .helpers import wait_for
from .test_web import boom, double, mux

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="the playwright package is not installed"),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def served(aqueue_url: str) -> Iterator[str]:
    """The dashboard, actions enabled, served by uvicorn in a thread; yields its URL."""
    port = free_port()
    config = uvicorn.Config(
        dashboard(aqueue_url, read_only=False), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    anyio.run(wait_for, lambda: server.started)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


async def populate(url: str) -> None:
    """Queue "emails": 5 pending tasks. Queue "work": one completed, one archived."""
    async with aqueue.Client(url) as client:
        await client.enqueue(double, 21, retention=600)
        await client.enqueue(boom, {"html": "<b>bold?</b>"})
        await drain(mux, url, queues=["work"], retry_delay=lambda *a: 0.0)
        for i in range(5):
            payload = {"to": f"user{i}@example.com", "subject": "Welcome <aboard>"}
            await client.enqueue("email:send", payload, queue="emails")


def resume(url: str, queue: str) -> None:
    """Resume from a thread of its own: Playwright's sync API runs a loop in this one."""

    async def go() -> None:
        async with Inspector(url) as inspector:
            await inspector.resume(queue)

    with ThreadPoolExecutor(1) as pool:
        pool.submit(anyio.run, go).result(10)


def test_pause_a_queue_and_open_a_task_in_chromium(
    aqueue_url: str, served: str, tmp_path: Path
) -> None:
    anyio.run(populate, aqueue_url)
    assert sync_playwright is not None
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page: Page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("dialog", lambda dialog: dialog.accept())
            page.goto(served + "/")

            # The overview: the queue with its pending tasks, running.
            row = page.locator("#queues tr[data-queue=emails]")
            expect(row.locator("td.pending")).to_have_text("5")
            expect(row.locator("td.status")).to_have_text("running")
            page.screenshot(path=tmp_path / "overview.png", full_page=True)

            # Pause it: the answer says so, and the queue is marked paused.
            row.get_by_role("button", name="Pause").click()
            expect(page.locator(".flash.ok")).to_contain_text("queue emails paused")
            expect(page.locator("h1 .badge")).to_have_text("paused")
            page.screenshot(path=tmp_path / "queue.png", full_page=True)
            page.goto(served + "/")
            expect(row.locator("td.status")).to_have_text("paused")

            # Resumed behind the page's back: it updates itself, no reload.
            marker = page.evaluate("() => (window.__marker = 'still the same page')")
            resume(aqueue_url, "emails")
            expect(row.locator("td.status")).to_have_text("running", timeout=10_000)
            assert page.evaluate("() => window.__marker") == marker

            # Open a task from the queue page: its payload shows, as text.
            page.goto(served + "/queues/emails")
            first = page.locator("#tasks tbody tr").first.locator("td").first
            task_id = first.inner_text()
            first.locator("a").click()
            expect(page.locator("h1")).to_contain_text(task_id)
            expect(page.locator("pre.payload")).to_contain_text('"subject": "Welcome <aboard>"')
            page.screenshot(path=tmp_path / "task.png", full_page=True)

            for name in ("workers", "cron"):
                page.goto(f"{served}/{name}")
                page.screenshot(path=tmp_path / f"{name}.png", full_page=True)
            page.goto(served + "/queues/work?state=archived")
            page.screenshot(path=tmp_path / "archived.png", full_page=True)
        finally:
            browser.close()
    shots = sorted(p.name for p in tmp_path.glob("*.png"))
    assert shots == ["archived.png", "cron.png", "overview.png", "queue.png", "task.png",
                     "workers.png"]  # fmt: skip
    assert all((tmp_path / s).stat().st_size > 5_000 for s in shots)
