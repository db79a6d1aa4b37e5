"""The dashboard's Limits page, through Starlette's test client against a real server:
each declared limit with its rate, its concurrency limit, the slots taken now (as text
and as a bar), its keys and how many claims it held back. Read-only, always."""

from __future__ import annotations

from html.parser import HTMLParser

import anyio
from starlette.testclient import TestClient

import aqueue
from aqueue import Context, Mux, Worker
from aqueue.server import free_port
from aqueue.web import dashboard

from .helpers import wait_for
from .test_web import XSS

Row = dict[str, str]


class LimitRows(HTMLParser):
    """The rows of the ``limits`` table, by (queue, task type or ""): the text of each
    cell, and the bar's label and width."""

    COLUMNS = ("queue", "task_type", "rate", "concurrency", "running", "keys", "held_back")

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.key: tuple[str, str] | None = None
        self.cells: list[str] = []
        self.bar: Row = {}
        self.rows: dict[tuple[str, str], Row] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "table":
            self.inside = a.get("id") == "limits"
        elif self.inside and tag == "tr" and "data-queue" in a:
            self.key, self.cells, self.bar = (a["data-queue"], a["data-task-type"]), [], {}
        elif self.key and tag == "td":
            self.cells.append("")
        elif self.key and tag == "svg":
            self.bar = {"label": a["aria-label"], "class": a["class"]}
        elif self.key and tag == "rect" and a.get("class") == "used":
            self.bar["width"] = a["width"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self.key:
            row = dict(zip(self.COLUMNS, self.cells, strict=True))
            self.rows[self.key] = {**row, **{f"bar_{k}": v for k, v in self.bar.items()}}
            self.key = None
        elif tag == "table":
            self.inside = False

    def handle_data(self, data: str) -> None:
        if self.key and self.cells:
            self.cells[-1] = " ".join([*self.cells[-1].split(), *data.split()])


def limit_rows(html: str) -> dict[tuple[str, str], Row]:
    parser = LimitRows()
    parser.feed(html)
    return parser.rows


def test_limits_page_shows_each_limit_with_its_usage(url: str) -> None:
    mux = Mux()
    release = anyio.Event()
    started: list[str] = []
    mux.limit_queue("bulk", concurrency_limit=4)
    mux.limit_queue("default", rate_limit=aqueue.Rate(3, per=1.5))

    @mux.task("report", concurrency_limit=1, rate_limit="90/m", limit_key=lambda t: t)
    async def report(ctx: Context, tenant: str) -> None:
        started.append(tenant)
        await release.wait()

    @mux.task("import", queue="bulk", concurrency_limit=2)
    async def load(ctx: Context, n: int) -> None:
        started.append("bulk")
        await release.wait()

    async def main() -> str:
        async with aqueue.Client(url) as client:
            await client.enqueue_many([aqueue.Job(report, t) for t in ("acme", "acme", "initech")])
            await client.enqueue_many([aqueue.Job(load, n) for n in range(3)])
        async with (
            Worker(mux, url, queues=["default", "bulk"], concurrency=10),
            aqueue.Inspector(url) as inspector,
        ):
            # One report per tenant and two imports run; the rest are held back.
            await wait_for(lambda: len(started) == 4)

            async def held_back() -> bool:
                limits = await inspector.limits()
                return all(x.held_back for x in limits if x.task_type == "import")

            await wait_for(held_back)

            def get() -> str:
                with TestClient(dashboard(url)) as http:
                    return http.get("/limits").text

            page = await anyio.to_thread.run_sync(get)
            release.set()
        return page

    page = anyio.run(main)
    assert "<h1>Limits <small>4 declared</small></h1>" in page
    rows = limit_rows(page)
    assert list(rows) == [("bulk", ""), ("bulk", "import"), ("default", ""), ("default", "report")]
    # A queue's own limit: 2 of its 4 slots are taken by the imports.
    bulk = rows[("bulk", "")]
    assert [bulk[c] for c in ("task_type", "rate", "concurrency", "running", "keys")] == [
        "queue", "—", "4", "2/4", "0",
    ]  # fmt: skip
    assert (bulk["bar_label"], bulk["bar_width"], bulk["bar_class"]) == (
        "2 of 4 slots taken", "50.0", "meter"
    )  # fmt: skip
    # A task type's limit, full: the third import is held back.
    imports = rows[("bulk", "import")]
    assert (imports["running"], imports["bar_width"], imports["bar_class"]) == (
        "2/2", "100.0", "meter full"
    )  # fmt: skip
    assert int(imports["held_back"]) >= 1
    # A rate limit alone takes no slots: no bar.
    default = rows[("default", "")]
    assert [default[c] for c in ("rate", "concurrency", "running", "keys")] == [
        "3/1.5s", "—", "—", "2"
    ]  # fmt: skip
    assert "bar_label" not in default
    assert 'title="at most 3 starts in any 1.5s"' in page
    # Per key: each tenant has one slot, and both are taken.
    reports = rows[("default", "report")]
    assert [reports[c] for c in ("rate", "concurrency", "running", "keys")] == [
        "90/m", "1 per key", "2/2", "2"
    ]  # fmt: skip
    assert '<a href="/queues/bulk">bulk</a>' in page


def test_limits_page_without_limits_says_so(aqueue_url: str) -> None:
    with TestClient(dashboard(aqueue_url)) as http:
        page = http.get("/limits")
    assert page.status_code == 200
    assert "<h1>Limits <small>0 declared</small></h1>" in page.text
    assert "No limits declared" in page.text
    assert 'id="limits"' not in page.text


def test_every_page_links_to_the_limits_page(aqueue_url: str) -> None:
    with TestClient(dashboard(aqueue_url)) as http:
        overview, limits = http.get("/").text, http.get("/limits").text
        live = http.get("/limits", headers={"X-Aqueue-Live": "1"})
    assert '<a href="/limits" >Limits</a>' in overview
    assert '<a href="/limits" class="here">Limits</a>' in limits
    # The page keeps itself current: it polls its live block, which renders alone.
    assert "<html" not in live.text
    assert "<h1>Limits" in live.text
    assert live.headers["cache-control"] == "no-store"


def test_limits_page_changes_nothing_and_shows_names_as_text(aqueue_url: str) -> None:
    mux = Mux()
    mux.limit_queue("bulk", concurrency_limit=1)

    @mux.task(XSS, queue="bulk", rate_limit="5/s")
    async def evil(ctx: Context) -> None: ...

    async def declare() -> None:
        async with Worker(mux, aqueue_url, queues=["bulk"]):
            pass  # the worker declared its limits at start

    anyio.run(declare)
    with TestClient(dashboard(aqueue_url, read_only=False)) as http:
        page = http.get("/limits").text
        refused = http.post("/limits")
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in page
    assert XSS not in page
    # Nothing to act on, even with actions enabled.
    assert 'method="post"' not in page  # (the search form is a GET)
    assert refused.status_code == 405


def test_limits_page_when_the_server_is_down_says_so() -> None:
    with TestClient(dashboard(f"redis://127.0.0.1:{free_port()}/0")) as http:
        page = http.get("/limits")
    assert page.status_code == 503
    assert "the server is unreachable" in page.text


def test_limits_page_is_guarded_by_auth(aqueue_url: str) -> None:
    with TestClient(dashboard(aqueue_url, auth="s3cret")) as http:
        refused = http.get("/limits")
        ok = http.get("/limits", headers={"Authorization": "Bearer s3cret"})
    assert refused.status_code == 401
    assert ok.status_code == 200
