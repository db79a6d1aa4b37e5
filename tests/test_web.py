"""The web dashboard, through Starlette's test client against a real server: each page
shows the figures the server holds for a known set of tasks; actions change state only
when enabled and with a valid CSRF token; auth guards every route; user data is escaped.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest
from starlette.testclient import TestClient

import aqueue
from aqueue import Context, Inspector, Mux, SkipRetry, Worker
from aqueue.testing import drain
from aqueue.web import dashboard

from .helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]
XSS = "<script>alert('pwned')</script>"
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')

mux = Mux()


@mux.task("double", queue="work")
async def double(ctx: Context, n: int) -> int:
    return n * 2


@mux.task("boom", queue="work", max_retry=0)
async def boom(ctx: Context, payload: object) -> None:
    raise SkipRetry(f"gave up on {XSS}")


class Known(msgspec.Struct):
    """Ids of the tasks ``populate`` made."""

    completed: str
    archived: str
    pending: list[str]
    scheduled: str
    mail: list[str]


async def populate(url: str) -> Known:
    """Queue "work": 1 completed (result 42), 1 archived (an error with <script>),
    3 pending, 1 scheduled; 2 attempts today, 1 failed. Queue "mail": 25 pending, paused."""
    async with aqueue.Client(url) as client:
        done = await client.enqueue(double, 21, retention=600)
        failed = await client.enqueue(boom, {"html": XSS})
        await drain(mux, url, queues=["work"], retry_delay=lambda *a: 0.0)
        pending = [(await client.enqueue(double, n)).id for n in (1, 2, 3)]
        scheduled = await client.enqueue(double, 4, process_in=3600)
        mail = [(await client.enqueue("send", {"to": f"u{i}"}, queue="mail")).id for i in range(25)]
    async with Inspector(url) as inspector:
        await inspector.pause("mail")
    return Known(done.id, failed.id, pending, scheduled.id, mail)


@pytest.fixture
def known(aqueue_url: str) -> Known:
    return anyio.run(populate, aqueue_url)


@pytest.fixture
def http(aqueue_url: str, known: Known) -> Iterator[TestClient]:
    with TestClient(dashboard(aqueue_url)) as client:
        yield client


@pytest.fixture
def admin(aqueue_url: str, known: Known) -> Iterator[TestClient]:
    with TestClient(dashboard(aqueue_url, read_only=False)) as client:
        yield client


class Cells(HTMLParser):
    """The text of each cell of the rows of one table, by the row's first cell."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id, self.inside = table_id, False
        self.row: list[str] | None = None
        self.rows: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.inside = dict(attrs).get("id") == self.table_id
        elif self.inside and tag == "tr":
            self.row = []
        elif self.inside and self.row is not None and tag == "td":
            self.row.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self.row:
            self.rows[self.row[0]] = self.row[1:]
            self.row = None
        elif tag == "table":
            self.inside = False

    def handle_data(self, data: str) -> None:
        if self.row:
            self.row[-1] += data.strip()


def table(html: str, table_id: str) -> dict[str, list[str]]:
    parser = Cells(table_id)
    parser.feed(html)
    return parser.rows


def csrf(http: TestClient, path: str = "/") -> str:
    match = CSRF.search(http.get(path).text)
    assert match is not None, "no action form on the page"
    return match.group(1)


def info(url: str, queue: str) -> aqueue.QueueInfo:
    async def read() -> aqueue.QueueInfo:
        async with Inspector(url) as inspector:
            return await inspector.queue_info(queue)

    return anyio.run(read)


def state(url: str, queue: str, task_id: str) -> str | None:
    async def read() -> str | None:
        async with Inspector(url) as inspector:
            try:
                return (await inspector.get_task(queue, task_id)).state
            except aqueue.TaskNotFound:
                return None

    return anyio.run(read)


# -- pages -----------------------------------------------------------------------------


def test_overview_shows_each_queue_sizes_counters_and_pause(url: str) -> None:
    anyio.run(populate, url)
    with TestClient(dashboard(url)) as http:
        page = http.get("/")
    assert page.status_code == 200
    rows = table(page.text, "queues")
    # pending, active, scheduled, retry, archived, completed, processed today, failed today
    assert rows["work"][:8] == ["3", "0", "1", "0", "1", "1", "2", "1"]
    assert rows["work"][-1] == "running"
    assert rows["mail"][:8] == ["25", "0", "0", "0", "0", "0", "0", "0"]
    assert rows["mail"][-1] == "paused"
    assert re.search(r"\d+(ms|\.\ds)", rows["mail"][8]), "latency of the oldest pending task"
    # The per-day chart has today's bars (all queues together).
    assert re.search(r"<title>\d{4}-\d\d-\d\d: 2 processed</title>", page.text)
    assert re.search(r"<title>\d{4}-\d\d-\d\d: 1 failed</title>", page.text)
    # Read-only by default: no action forms at all.
    assert 'method="post"' not in page.text  # (the search forms are GETs)
    assert "read-only" in page.text


def test_queue_page_lists_tasks_of_a_state_page_by_page(http: TestClient, known: Known) -> None:
    first = http.get("/queues/mail?state=pending")
    assert first.status_code == 200
    assert list(table(first.text, "tasks")) == known.mail[:20]  # next to run first
    assert "page 1 of 2" in first.text
    second = http.get("/queues/mail?state=pending&page=2")
    assert list(table(second.text, "tasks")) == known.mail[20:]
    scheduled = table(http.get("/queues/work?state=scheduled").text, "tasks")
    assert list(scheduled) == [known.scheduled]
    assert scheduled[known.scheduled][2] == "0/25"
    assert scheduled[known.scheduled][3].startswith("in ")
    archived = table(http.get("/queues/work?state=archived").text, "tasks")
    assert archived[known.archived][4] == f"SkipRetry: gave up on {XSS}"


def test_task_page_shows_payload_result_error_retries_and_times(
    http: TestClient, known: Known
) -> None:
    done = http.get(f"/queues/work/tasks/{known.completed}").text
    assert re.search(r"<pre class=\"payload\">21</pre>", done)
    assert re.search(r"<pre class=\"result\">42</pre>", done)
    assert "<dt>Retries</dt><dd>0 of 25</dd>" in done
    assert re.search(r"<dt>Completed</dt><dd>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", done)
    failed = http.get(f"/queues/work/tasks/{known.archived}").text
    assert "<dt>Retries</dt><dd>0 of 0</dd>" in failed
    assert "<dt>Last failure</dt>" in failed
    assert "gave up on &lt;script&gt;" in failed


def test_workers_page_shows_each_live_worker_with_its_active_task(url: str) -> None:
    busy = Mux()
    started, release = anyio.Event(), anyio.Event()

    @busy.task("slow", queue="slow")
    async def slow(ctx: Context, payload: dict[str, str]) -> None:
        started.set()
        await release.wait()

    async def main() -> str:
        async with aqueue.Client(url) as client:
            task = await client.enqueue(slow, {"who": "ada"})
            async with Worker(busy, url, queues=["slow"]):
                with anyio.fail_after(10):
                    await started.wait()

                def get() -> str:
                    with TestClient(dashboard(url)) as http:
                        return http.get("/workers").text

                page = await anyio.to_thread.run_sync(get)
                release.set()
            return page.replace(task.id, "TASK-ID")

    page = anyio.run(main)
    assert "1 live" in page
    assert "TASK-ID" in page
    assert "1/10 busy" in page
    assert "{&#34;who&#34;:&#34;ada&#34;}" in page


def test_cron_page_shows_each_entry_with_next_and_last_run(url: str) -> None:
    crons = Mux()

    @crons.cron("*/5 * * * *", name="digest", tz="Europe/Paris", queue="mail")
    async def digest(ctx: Context) -> None: ...

    async def register() -> None:
        async with Worker(crons, url, queues=["mail"]):
            pass  # the worker registered the schedule at start

    anyio.run(register)
    with TestClient(dashboard(url)) as http:
        rows = table(http.get("/cron").text, "cron")
    spec, tz, task, queue, next_run, last_run = rows["digest"]
    assert (spec, tz, task, queue) == ("*/5 * * * *", "Europe/Paris", "digest", "mail")
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:00 UTCin \d", next_run)
    assert last_run == "never"


def test_live_block_alone_when_the_page_polls_for_it(http: TestClient) -> None:
    full = http.get("/")
    live = http.get("/", headers={"X-Aqueue-Live": "1"})
    assert "<html" in full.text
    assert "<html" not in live.text
    assert 'id="queues"' in live.text
    assert live.headers["cache-control"] == "no-store"


def test_unknown_queue_task_or_state_is_a_clear_error_page(http: TestClient) -> None:
    nope = http.get("/queues/nope")
    assert nope.status_code == 404
    assert "no queue &#39;nope&#39;" in nope.text
    gone = http.get("/queues/work/tasks/missing")
    assert gone.status_code == 404
    assert "no task &#39;missing&#39;" in gone.text
    bad = http.get("/queues/work?state=lost")
    assert bad.status_code == 400
    assert "unknown state" in bad.text


def test_static_assets_are_served_by_the_package(http: TestClient) -> None:
    page = http.get("/").text
    assert 'href="/static/dash.css"' in page
    assert "//" not in re.sub(
        r"https?://www\.w3\.org", "", " ".join(re.findall(r'(?:src|href)="([^"]*)"', page))
    )
    assert http.get("/static/dash.css").status_code == 200
    assert "X-Aqueue-Live" in http.get("/static/dash.js").text


# -- escaping --------------------------------------------------------------------------


def test_payload_error_and_task_name_with_script_are_shown_as_text(aqueue_url: str) -> None:
    async def setup() -> str:
        async with aqueue.Client(aqueue_url) as client:
            return (await client.enqueue(XSS, {"html": XSS}, queue="evil")).id

    task_id = anyio.run(setup)
    with TestClient(dashboard(aqueue_url, read_only=False)) as http:
        pages = [
            http.get("/").text,
            http.get("/queues/evil").text,
            http.get(f"/queues/evil/tasks/{task_id}").text,
        ]
    escaped = "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;"
    for page in pages:
        assert "<script>alert" not in page
    assert escaped in pages[1]  # the task name in the list
    assert escaped in pages[2]  # name and payload on the task page


def test_error_with_script_is_shown_as_text(http: TestClient, known: Known) -> None:
    page = http.get(f"/queues/work/tasks/{known.archived}").text
    assert "<script>alert" not in page
    assert '<pre class="error">SkipRetry: gave up on &lt;script&gt;' in page


# -- actions ---------------------------------------------------------------------------


def test_read_only_dashboard_refuses_every_action(
    aqueue_url: str, http: TestClient, known: Known
) -> None:
    with TestClient(dashboard(aqueue_url, read_only=False)) as other:
        token = csrf(other)
    for path in (
        "/queues/work/pause",
        f"/queues/work/tasks/{known.pending[0]}/delete",
        "/queues/work/states/pending/delete-all",
    ):
        refused = http.post(path, data={"csrf": token})
        assert refused.status_code == 403
        assert "read-only" in refused.text
    assert not info(aqueue_url, "work").paused
    assert info(aqueue_url, "work").pending == 3


def test_pause_and_resume_a_queue_with_a_message(aqueue_url: str, admin: TestClient) -> None:
    token = csrf(admin)
    paused = admin.post("/queues/work/pause", data={"csrf": token})
    assert paused.status_code == 200  # after the redirect to the queue page
    assert paused.url.path == "/queues/work"
    assert "queue work paused" in paused.text
    assert info(aqueue_url, "work").paused
    assert "queue work paused" not in admin.get("/queues/work").text  # shown once
    resumed = admin.post("/queues/work/resume", data={"csrf": token})
    assert "queue work resumed" in resumed.text
    assert not info(aqueue_url, "work").paused


def test_task_actions_move_tasks(aqueue_url: str, admin: TestClient, known: Known) -> None:
    token = csrf(admin)
    ran = admin.post(f"/queues/work/tasks/{known.scheduled}/run", data={"csrf": token})
    assert f"task {known.scheduled} moved to pending" in ran.text
    assert state(aqueue_url, "work", known.scheduled) == "pending"
    admin.post(f"/queues/work/tasks/{known.pending[0]}/archive", data={"csrf": token})
    assert state(aqueue_url, "work", known.pending[0]) == "archived"
    admin.post(f"/queues/work/tasks/{known.pending[1]}/cancel", data={"csrf": token})
    assert state(aqueue_url, "work", known.pending[1]) == "archived"
    deleted = admin.post(f"/queues/work/tasks/{known.completed}/delete", data={"csrf": token})
    assert deleted.url.path == "/queues/work"
    assert state(aqueue_url, "work", known.completed) is None


def test_a_refused_move_answers_with_the_reason(
    aqueue_url: str, admin: TestClient, known: Known
) -> None:
    token = csrf(admin)
    page = admin.post(f"/queues/work/tasks/{known.pending[0]}/run", data={"csrf": token})
    assert 'class="flash error"' in page.text
    assert "it is pending" in page.text
    assert state(aqueue_url, "work", known.pending[0]) == "pending"


def test_bulk_actions_per_state(aqueue_url: str, admin: TestClient, known: Known) -> None:
    token = csrf(admin)
    page = admin.post("/queues/mail/states/pending/archive-all", data={"csrf": token})
    assert "25 pending task(s) of queue mail archived" in page.text
    page = admin.post("/queues/mail/states/archived/run-all", data={"csrf": token})
    assert "25 archived task(s) of queue mail moved to pending" in page.text
    page = admin.post("/queues/mail/states/pending/delete-all", data={"csrf": token})
    assert "25 pending task(s) of queue mail deleted" in page.text
    mail = info(aqueue_url, "mail")
    assert (mail.pending, mail.archived) == (0, 0)


def test_action_without_a_valid_csrf_token_is_refused(aqueue_url: str, admin: TestClient) -> None:
    token = csrf(admin)
    with TestClient(dashboard(aqueue_url, read_only=False)) as other:
        foreign = csrf(other)  # signed by another dashboard's secret
    for data in ({}, {"csrf": "0" * 64}, {"csrf": foreign}):
        refused = admin.post("/queues/work/pause", data=data)
        assert refused.status_code == 403
        assert "CSRF token is missing or wrong" in refused.text
    # The right token without the cookie it was signed for: what a forged cross-site
    # form would send if it had somehow learned a token.
    admin.cookies.clear()
    refused = admin.post("/queues/work/pause", data={"csrf": token})
    assert refused.status_code == 403
    assert not info(aqueue_url, "work").paused


# -- auth ------------------------------------------------------------------------------

ROUTES = ["/", "/workers", "/cron", "/queues/work", "/static/dash.css"]


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {raw}"}


def test_basic_auth_guards_every_route(aqueue_url: str, known: Known) -> None:
    app = dashboard(aqueue_url, read_only=False, auth=("ada", "s3cret"))
    with TestClient(app) as http:
        for path in ROUTES:
            refused = http.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"].startswith("Basic")
            assert http.get(path, headers=basic("ada", "wrong")).status_code == 401
            assert http.get(path, headers=basic("bob", "s3cret")).status_code == 401
            assert http.get(path, headers=basic("ada", "s3cret")).status_code == 200
        assert http.post("/queues/work/pause").status_code == 401
    assert not info(aqueue_url, "work").paused


def test_token_auth_takes_a_bearer_header_or_the_basic_password(
    aqueue_url: str, known: Known
) -> None:
    with TestClient(dashboard(aqueue_url, auth="tok-123")) as http:
        for path in ROUTES:
            assert http.get(path).status_code == 401
            assert http.get(path, headers={"authorization": "Bearer nope"}).status_code == 401
            assert http.get(path, headers={"authorization": "Bearer tok-123"}).status_code == 200
            assert http.get(path, headers=basic("anyone", "tok-123")).status_code == 200


@pytest.mark.parametrize("auth", ["", ("ada", ""), ("ada",), 42])
def test_dashboard_refuses_malformed_auth(auth: object) -> None:
    with pytest.raises(aqueue.AqueueError, match="auth must be"):
        dashboard("redis://127.0.0.1:1/0", auth=auth)  # type: ignore[arg-type]


# -- the command -----------------------------------------------------------------------


def aqueue_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aqueue._cli", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::"])
def test_dash_refuses_a_public_address_without_auth(host: str) -> None:
    done = aqueue_cli("dash", "--host", host, "--url", "redis://127.0.0.1:1/0")
    assert done.returncode == 2
    assert f"refusing to serve the dashboard on {host} without authentication" in done.stderr


def test_dash_serves_the_dashboard_with_a_token_until_sigterm(
    aqueue_url: str, known: Known
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "AQUEUE_DASH_TOKEN": "tok-123", "AQUEUE_URL": aqueue_url}
    command = [sys.executable, "-m", "aqueue._cli", "dash", "--port", str(port)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(base + "/", timeout=1).status_code == 401
            except httpx.TransportError:
                return False

        anyio.run(wait_for, up)
        page = httpx.get(base + "/", headers={"authorization": "Bearer tok-123"})
        assert page.status_code == 200
        assert table(page.text, "queues")["mail"][0] == "25"
        assert "read-only" in page.text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert f"http://127.0.0.1:{port}/ (read-only)" in out


def test_dash_needs_user_and_password_together() -> None:
    done = aqueue_cli("dash", "--user", "ada")
    assert done.returncode == 2
    assert "--user and --password" in done.stderr
