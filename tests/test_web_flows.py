"""The dashboard's Flows pages, through Starlette's test client against a real server:
the flows newest first with their state and progress (as text and as a bar), filtered by
state; one flow's steps in stages by dependency depth, linked to their tasks; and the
cancel button, there only with actions enabled, behind the CSRF check."""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser

import anyio
import pytest
from starlette.testclient import TestClient

import aqueue
from aqueue import Job, Worker
from aqueue.server import free_port
from aqueue.web import dashboard

from .helpers import wait_for
from .test_cli_flows import flow_mux, flow_of, make_flows
from .test_web import XSS, csrf

Row = dict[str, str]


class Rows(HTMLParser):
    """The rows of one table that carry ``data-<key>``: the text of each cell, the
    stage of the ``tbody`` holding them, their links, and their bar's label and width."""

    def __init__(self, table_id: str, key: str) -> None:
        super().__init__()
        self.table_id, self.key = table_id, f"data-{key}"
        self.inside = False
        self.stage = ""
        self.row: str | None = None
        self.cells: list[str] = []
        self.extra: Row = {}
        self.rows: dict[str, tuple[list[str], Row]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "table":
            self.inside = a.get("id") == self.table_id
        elif self.inside and tag == "tbody":
            self.stage = a.get("data-stage", "")
        elif self.inside and tag == "tr" and self.key in a:
            self.row, self.cells, self.extra = a[self.key], [], {"stage": self.stage}
        elif self.row is not None and tag == "td":
            self.cells.append("")
        elif self.row is not None and tag == "a":
            self.extra.setdefault("links", "")
            self.extra["links"] += a["href"] + " "
        elif self.row is not None and tag == "svg":
            self.extra["bar_label"], self.extra["bar_class"] = a["aria-label"], a["class"]
        elif self.row is not None and tag == "rect" and a.get("class") == "used":
            self.extra["bar_width"] = a["width"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self.row is not None:
            self.rows[self.row] = (self.cells, self.extra)
            self.row = None
        elif tag == "table":
            self.inside = False

    def handle_data(self, data: str) -> None:
        if self.row is not None and self.cells:
            self.cells[-1] = " ".join([*self.cells[-1].split(), *data.split()])


def rows(html: str, table_id: str, key: str) -> dict[str, tuple[list[str], Row]]:
    parser = Rows(table_id, key)
    parser.feed(html)
    return parser.rows


@pytest.fixture
def made(aqueue_url: str) -> str:
    anyio.run(make_flows, aqueue_url)
    return aqueue_url


@pytest.fixture
def admin(made: str) -> Iterator[TestClient]:
    with TestClient(dashboard(made, read_only=False)) as client:
        yield client


def state_of(url: str, flow_id: str) -> str:
    return anyio.run(flow_of, url, flow_id).state


# -- the list ------------------------------------------------------------------------------


def test_flows_page_lists_flows_with_their_state_and_progress(url: str) -> None:
    async def main() -> str:
        await make_flows(url, error=f"exploded {XSS}")
        release = anyio.Event()
        # In a queue of its own: f-wait stays pending, in "default", which none serves.
        slow = aqueue.chain(*(Job(t, 1, queue="slow") for t in ("add", "hold", "add")))
        async with aqueue.Client(url) as client, Worker(flow_mux(release), url, queues=["slow"]):
            info = await client.enqueue_flow(slow, flow_id="f-run")

            async def holding() -> bool:
                return (await client.flow(info.id)).steps[1].state == "active"

            await wait_for(holding)

            def get() -> str:
                with TestClient(dashboard(url)) as http:
                    return http.get("/flows").text

            page = await anyio.to_thread.run_sync(get)
            release.set()
            await client.result(info, timeout=20)
        return page

    page = anyio.run(main)
    assert "<h1>Flows</h1>" in page
    listed = rows(page, "flows", "flow")
    assert list(listed) == ["f-run", "f-wait", "f-done", "f-fail"]  # newest first
    cells = {flow_id: cells[1:3] for flow_id, (cells, _) in listed.items()}
    assert cells == {
        "f-run": ["running", "1/3"],
        "f-wait": ["pending", "0/2"],
        "f-done": ["completed", "2/2"],
        "f-fail": ["failed", "3/3"],
    }
    bars = {f: (x["bar_label"], x["bar_width"], x["bar_class"]) for f, (_, x) in listed.items()}
    assert bars == {
        "f-run": ("1 of 3 steps done", "33.3", "meter running"),
        "f-wait": ("0 of 2 steps done", "0.0", "meter pending"),
        "f-done": ("2 of 2 steps done", "100.0", "meter completed"),
        "f-fail": ("3 of 3 steps done", "100.0", "meter failed"),
    }
    assert listed["f-fail"][1]["links"] == "/flows/f-fail "
    assert listed["f-fail"][0][5].startswith("step f-fail-1 (boom) ended archived: RuntimeError")
    # The error holds <script>: shown as text.
    assert "exploded &lt;script&gt;" in page
    assert XSS not in page
    assert listed["f-wait"][0][4] == "—"  # not ended


def test_flows_page_filters_by_state(made: str) -> None:
    with TestClient(dashboard(made)) as http:
        failed = http.get("/flows?state=failed").text
        running = http.get("/flows", params={"state": "running"}).text
        unknown = http.get("/flows?state=done")
    assert list(rows(failed, "flows", "flow")) == ["f-fail"]
    assert '<a href="/flows?state=failed" class="here" data-state="failed">' in failed
    assert "No running flows." in running
    assert unknown.status_code == 400
    assert "unknown flow state &#39;done&#39;" in unknown.text


def test_flows_page_pages_through_the_flows(made: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("aqueue.web._flowpages.PAGE_SIZE", 2)
    with TestClient(dashboard(made)) as http:
        first, second = http.get("/flows").text, http.get("/flows?page=2").text
        third = http.get("/flows?page=3").text
    assert list(rows(first, "flows", "flow")) == ["f-wait", "f-done"]
    assert '<a href="/flows?page=2">older' in first
    assert list(rows(second, "flows", "flow")) == ["f-fail"]
    assert '<a href="/flows?page=1">' in second
    assert 'href="/flows?page=3"' not in second  # one flow on it: the last page
    assert "No flows on page 3." in third


def test_every_page_links_to_the_flows_page(aqueue_url: str) -> None:
    with TestClient(dashboard(aqueue_url)) as http:
        overview, flows = http.get("/").text, http.get("/flows").text
        live = http.get("/flows", headers={"X-Aqueue-Live": "1"})
    assert '<a href="/flows" >Flows</a>' in overview
    assert '<a href="/flows" class="here">Flows</a>' in flows
    assert "No flows." in flows
    # The page keeps itself current: it polls its live block, which renders alone.
    assert "<html" not in live.text
    assert "<h1>Flows</h1>" in live.text


# -- one flow ------------------------------------------------------------------------------


def test_flow_page_shows_steps_in_stages_with_errors_and_links(made: str) -> None:
    with TestClient(dashboard(made)) as http:
        page = http.get("/flows/f-fail").text
    assert '<h1 class="mono">f-fail <span class="badge failed">failed</span>' in page
    assert 'aria-label="3 of 3 steps done"' in page
    assert (
        '<pre class="error">step f-fail-1 (boom) ended archived: RuntimeError: exploded</pre>'
        in page
    )
    steps = rows(page, "steps", "step")
    # index, step, type, queue, state, after, error
    assert {i: cells for i, (cells, _) in steps.items()} == {
        "0": ["0", "f-fail-0", "add", "default", "completed", "—", ""],
        "1": ["1", "f-fail-1", "boom", "default", "archived", "—", "RuntimeError: exploded"],
        "2": ["2", "f-fail-2", "sum", "default", "archived", "0, 1",
              "not run: step f-fail-1 (boom) ended archived: RuntimeError: exploded"],
    }  # fmt: skip
    assert {i: x["stage"] for i, (_, x) in steps.items()} == {"0": "1", "1": "1", "2": "2"}
    # Steps that ran link to their task; the one archived without running never was in
    # its queue: no link to a page that would not exist.
    assert steps["0"][1]["links"] == "/queues/default/tasks/f-fail-0 /queues/default "
    assert steps["1"][1]["links"] == "/queues/default/tasks/f-fail-1 /queues/default "
    assert steps["2"][1]["links"] == "/queues/default "
    with TestClient(dashboard(made)) as http:
        assert http.get("/queues/default/tasks/f-fail-1").status_code == 200


def test_flow_page_layers_a_dag_by_dependency_depth(aqueue_url: str) -> None:
    async def enqueue() -> None:
        flow = aqueue.Flow()
        a = flow.add(Job("add", 1))
        b = flow.add(Job("add"), after=a)
        c = flow.add(aqueue.chain(Job("add"), Job("add")), after=a)  # steps 2 and 3
        flow.add(Job("sum"), after=[b, c])  # step 4: after 1 and 3
        flow.add(Job("add", 7))  # step 5: waits for nothing
        async with aqueue.Client(aqueue_url) as client:
            await client.enqueue_flow(flow, flow_id="dag")

    anyio.run(enqueue)  # no worker: the first steps wait in their queue
    with TestClient(dashboard(aqueue_url)) as http:
        page = http.get("/flows/dag").text
    steps = rows(page, "steps", "step")
    stages = {i: x["stage"] for i, (_, x) in steps.items()}
    assert stages == {"0": "1", "5": "1", "1": "2", "2": "2", "3": "3", "4": "4"}
    assert list(steps) == ["0", "5", "1", "2", "3", "4"]  # stage by stage, in order added
    after = {i: cells[5] for i, (cells, _) in steps.items()}
    assert after == {"0": "—", "5": "—", "1": "0", "2": "0", "3": "2", "4": "1, 3"}
    state = {i: cells[4] for i, (cells, _) in steps.items()}
    assert state == {"0": "pending", "5": "pending", "1": "scheduled", "2": "scheduled",
                     "3": "scheduled", "4": "scheduled"}  # fmt: skip
    # Waiting for their dependencies, steps 1-4 are not in their queue yet.
    assert steps["0"][1]["links"] == "/queues/default/tasks/dag-0 /queues/default "
    assert steps["4"][1]["links"] == "/queues/default "
    assert "Stage 1 · waits for nothing" in page


def test_flow_page_shows_at_most_steps_shown(
    aqueue_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("aqueue.web._flowpages.STEPS_SHOWN", 3)

    async def enqueue() -> None:
        group = aqueue.group(Job("add", n) for n in range(5))
        async with aqueue.Client(aqueue_url) as client:
            await client.enqueue_flow(aqueue.chain(group, Job("sum")), flow_id="wide")

    anyio.run(enqueue)
    with TestClient(dashboard(aqueue_url)) as http:
        page = http.get("/flows/wide").text
    assert list(rows(page, "steps", "step")) == ["0", "1", "2"]
    assert '<p class="note" id="steps-shown">The first 3 of 6 steps.</p>' in page
    assert 'aria-label="0 of 6 steps done"' in page


def test_unknown_flow_is_a_clear_404(aqueue_url: str) -> None:
    with TestClient(dashboard(aqueue_url)) as http:
        unknown, malformed = http.get("/flows/nope"), http.get("/flows/a%7Bb%7D")
    assert unknown.status_code == 404
    assert "no flow &#39;nope&#39; (unknown, or its retention passed)" in unknown.text
    assert malformed.status_code == 404
    assert "no flow &#39;a{b}&#39;" in malformed.text


# -- cancel --------------------------------------------------------------------------------


def test_cancel_button_only_with_actions_enabled_and_a_flow_not_ended(made: str) -> None:
    with TestClient(dashboard(made)) as http:
        read_only = http.get("/flows/f-wait").text
    with TestClient(dashboard(made, read_only=False)) as admin:
        pending, done = admin.get("/flows/f-wait").text, admin.get("/flows/f-done").text
    assert 'method="post"' not in read_only
    assert 'action="/flows/f-wait/cancel"' in pending
    assert 'data-confirm="cancel flow f-wait?' in pending
    assert 'method="post"' not in done  # completed: nothing to cancel


def test_cancel_a_flow_from_its_page(made: str, admin: TestClient) -> None:
    token = csrf(admin, "/flows/f-wait")
    page = admin.post("/flows/f-wait/cancel", data={"csrf": token})
    assert page.status_code == 200  # after the redirect to the flow's page
    assert page.url.path == "/flows/f-wait"
    assert 'class="flash ok"' in page.text
    assert "flow f-wait cancelled: its running steps are being cancelled" in page.text
    assert state_of(made, "f-wait") == "cancelled"
    assert '<span class="badge cancelled">cancelled</span>' in page.text
    assert 'action="/flows/f-wait/cancel"' not in page.text  # ended: no button any more
    again = admin.post("/flows/f-wait/cancel", data={"csrf": token})
    assert "flow f-wait already cancelled: nothing to cancel" in again.text
    done = admin.post("/flows/f-done/cancel", data={"csrf": token})
    assert "flow f-done already completed: nothing to cancel" in done.text
    assert state_of(made, "f-done") == "completed"
    unknown = admin.post("/flows/nope/cancel", data={"csrf": token})
    assert unknown.status_code == 404  # the flow's page, with why the cancel failed
    assert 'class="flash error"' in unknown.text


def test_read_only_dashboard_or_a_bad_token_refuses_to_cancel(made: str, admin: TestClient) -> None:
    token = csrf(admin, "/flows/f-wait")
    with TestClient(dashboard(made)) as http:
        refused = http.post("/flows/f-wait/cancel", data={"csrf": token})
    assert refused.status_code == 403
    assert "read-only" in refused.text
    for data in ({}, {"csrf": "0" * 64}):
        forged = admin.post("/flows/f-wait/cancel", data=data)
        assert forged.status_code == 403
        assert "CSRF token is missing or wrong" in forged.text
    assert state_of(made, "f-wait") == "pending"


# -- the rest ------------------------------------------------------------------------------


def test_flows_pages_when_the_server_is_down_say_so() -> None:
    with TestClient(dashboard(f"redis://127.0.0.1:{free_port()}/0")) as http:
        pages = [http.get("/flows"), http.get("/flows/f-wait")]
    assert [p.status_code for p in pages] == [503, 503]
    assert all("the server is unreachable" in p.text for p in pages)


def test_flows_pages_are_guarded_by_auth(made: str) -> None:
    with TestClient(dashboard(made, read_only=False, auth="s3cret")) as http:
        refused = [http.get("/flows"), http.get("/flows/f-wait"), http.post("/flows/f-wait/cancel")]
        ok = http.get("/flows/f-wait", headers={"Authorization": "Bearer s3cret"})
    assert [r.status_code for r in refused] == [401, 401, 401]
    assert ok.status_code == 200
    assert state_of(made, "f-wait") == "pending"
