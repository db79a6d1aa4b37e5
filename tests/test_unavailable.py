"""No redis-py exception escapes a public call.

Every public coroutine of ``Client`` and ``Inspector`` (found by introspection: a new
one without a case here fails ``test_every_public_coroutine_has_a_case``) meets a
server that is gone before the call, one killed while the client holds idle
connections, one killed while the call waits for its reply, and one that stops
answering. Each raises ``BrokerUnavailable`` naming the server within the client's
timeout (plus a margin for a loaded machine), and ``close`` returns quietly. The admin
commands end in one ``aqueue: error:`` line and exit 1, the dashboard answers 503 with
a page that says why, and the metrics collector reports the server down without a
traceback.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import logging
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Protocol

import anyio
import pytest
import redis
from starlette.testclient import TestClient

from aqueue import BrokerUnavailable, Client, Inspector, Job, chain
from aqueue._cli.main import build_parser
from aqueue.metrics import QueueCollector
from aqueue.server import EmbeddedServer, free_port
from aqueue.web import dashboard

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 1.0
# Generous: the bound is the timeout, the margin is for a loaded 2-core machine.
MARGIN = 3.0
# How long a call is left in flight before its server is killed.
IN_FLIGHT = 0.3
# Past this a call is hung, not slow: fail the test rather than wait on.
HANG = 30.0
TASK = "t-1"
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')

Call = Callable[[Client, Inspector], Awaitable[object]]

# One case per public coroutine ("Class.method"), or several ("Class.method[variant]")
# where one method takes distinct paths to the server.
CALLS: dict[str, Call] = {
    "Client.enqueue": lambda c, i: c.enqueue("t", {"n": 1}),
    "Client.enqueue[durable]": lambda c, i: c.enqueue("t", 1, durable=True),
    "Client.enqueue[delayed]": lambda c, i: c.enqueue("t", 1, process_in=60, unique=60),
    "Client.enqueue_many": lambda c, i: c.enqueue_many([Job("t", 1), Job("t", 2, queue="b")]),
    "Client.result": lambda c, i: c.result(TASK, timeout=30),
    "Client.cancel": lambda c, i: c.cancel("default", TASK),
    "Client.enqueue_flow": lambda c, i: c.enqueue_flow(chain(Job("t", 1), Job("t"))),
    "Client.flow": lambda c, i: c.flow("f1"),
    "Client.close": lambda c, i: c.close(),
    "Inspector.queues": lambda c, i: i.queues(),
    "Inspector.queue_info": lambda c, i: i.queue_info("default"),
    "Inspector.history": lambda c, i: i.history("default", 3),
    "Inspector.pause": lambda c, i: i.pause("default"),
    "Inspector.resume": lambda c, i: i.resume("default"),
    "Inspector.delete_queue": lambda c, i: i.delete_queue("default", force=True),
    "Inspector.list_tasks": lambda c, i: i.list_tasks("default", "pending"),
    "Inspector.list_tasks[active]": lambda c, i: i.list_tasks("default", "active"),
    "Inspector.get_task": lambda c, i: i.get_task("default", TASK),
    "Inspector.run_task": lambda c, i: i.run_task("default", TASK),
    "Inspector.archive_task": lambda c, i: i.archive_task("default", TASK),
    "Inspector.delete_task": lambda c, i: i.delete_task("default", TASK),
    "Inspector.cancel": lambda c, i: i.cancel("default", TASK),
    "Inspector.run_all": lambda c, i: i.run_all("default", "scheduled"),
    "Inspector.archive_all": lambda c, i: i.archive_all("default", "pending"),
    "Inspector.delete_all": lambda c, i: i.delete_all("default", "pending"),
    "Inspector.workers": lambda c, i: i.workers(),
    "Inspector.cron_entries": lambda c, i: i.cron_entries(),
    "Inspector.limits": lambda c, i: i.limits(),
    "Inspector.flows": lambda c, i: i.flows(),
    "Inspector.cancel_flow": lambda c, i: i.cancel_flow("f1"),
    "Inspector.close": lambda c, i: i.close(),
}
# These return, whatever became of the server: closing connections to a dead server
# is not a failure.
QUIET = {"Client.close", "Inspector.close"}
# These wait by design: killed "in flight" means killed while they wait, not while a
# frozen server holds their first reply.
WAITING = {"Client.result"}

SITUATIONS = ["gone", "killed-idle", "killed-in-flight", "frozen"]


def public_coroutines(cls: type) -> set[str]:
    return {
        f"{cls.__name__}.{name}"
        for name, _ in inspect.getmembers(cls, inspect.iscoroutinefunction)
        if not name.startswith("_")
    }


def test_every_public_coroutine_has_a_case() -> None:
    assert {case.partition("[")[0] for case in CALLS} == (
        public_coroutines(Client) | public_coroutines(Inspector)
    )


# -- Client and Inspector ----------------------------------------------------------------


@contextmanager
def running_server() -> Iterator[EmbeddedServer]:
    """A server of its own: each case kills or freezes it."""
    server = EmbeddedServer().start()
    try:
        yield server
    finally:
        thaw(server)
        server.close()


def freeze(server: EmbeddedServer) -> None:
    """SIGSTOP: the server keeps its connections open and answers nothing."""
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)


def thaw(server: EmbeddedServer) -> None:
    if server.process is not None and server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)


async def warm_up(client: Client, inspector: Inspector) -> None:
    """Open the connections the calls find idle (the enqueue path's own pool and the
    redis-py pool), and leave a task for the per-task calls."""
    await client.enqueue("t", 1, task_id=TASK, retention=600)
    await inspector.queue_info("default")
    await inspector.workers()


@asynccontextmanager
async def lost(situation: str, case: str) -> AsyncIterator[tuple[Client, Inspector, int]]:
    """A Client and an Inspector (timeout ``TIMEOUT``) whose server is lost as
    ``situation`` says; yields them and the server's port while the call runs."""
    if situation == "gone":
        port = free_port()
        async with _pair(f"redis://127.0.0.1:{port}/0") as (client, inspector):
            yield client, inspector, port
        return
    with running_server() as server:
        async with _pair(server.url) as (client, inspector):
            await warm_up(client, inspector)
            if situation == "killed-idle":
                await anyio.to_thread.run_sync(server.kill)
            elif situation == "frozen" or case not in WAITING:
                # Killed in flight: frozen first, so that the call has sent its command
                # and waits for the reply when the kill comes.
                freeze(server)
            if situation != "killed-in-flight":
                yield client, inspector, server.port
                return
            async with anyio.create_task_group() as tg:
                tg.start_soon(_kill_later, server)
                yield client, inspector, server.port


@asynccontextmanager
async def _pair(url: str) -> AsyncIterator[tuple[Client, Inspector]]:
    async with Client(url, timeout=TIMEOUT) as client, Inspector(url, timeout=TIMEOUT) as i:
        yield client, i


async def _kill_later(server: EmbeddedServer) -> None:
    await anyio.sleep(IN_FLIGHT)
    await anyio.to_thread.run_sync(server.kill)


@pytest.mark.parametrize("case", sorted(CALLS))
@pytest.mark.parametrize("situation", SITUATIONS)
async def test_public_call_raises_broker_unavailable_when_the_server_is_lost(
    situation: str, case: str
) -> None:
    async with lost(situation, case) as (client, inspector, port):
        started = time.monotonic()
        with anyio.fail_after(HANG):
            if case in QUIET:
                await CALLS[case](client, inspector)
            else:
                with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{port}"):
                    await CALLS[case](client, inspector)
        elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT + MARGIN, f"{case} took {elapsed:.2f} s"


async def test_result_raises_broker_unavailable_when_the_server_dies_while_it_waits() -> None:
    """The pub/sub wait of ``Client.result`` goes through the same error mapping as
    every call: not redis-py's ConnectionError, and not after the result's timeout."""
    with running_server() as server:
        async with Client(server.url, timeout=TIMEOUT) as client:
            info = await client.enqueue("t", retention=600)  # nobody runs it
            async with anyio.create_task_group() as tg:
                tg.start_soon(_kill_later, server)
                started = time.monotonic()
                with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{server.port}"):
                    await client.result(info, timeout=60)
    assert time.monotonic() - started < IN_FLIGHT + TIMEOUT + MARGIN


def gone_cluster() -> str:
    """A cluster URL whose startup nodes are all free ports."""
    return "redis+cluster://" + ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))


@pytest.mark.parametrize("case", sorted(set(CALLS) - QUIET))
async def test_public_call_raises_broker_unavailable_when_no_cluster_node_answers(
    case: str,
) -> None:
    async with _pair(gone_cluster()) as (client, inspector):
        with anyio.fail_after(TIMEOUT + MARGIN), pytest.raises(BrokerUnavailable):
            await CALLS[case](client, inspector)


async def test_a_full_server_refuses_an_enqueue_with_broker_unavailable() -> None:
    """``maxmemory`` reached with ``noeviction``: the server refuses writes (OOM). That
    is the server's state, not the call's fault: BrokerUnavailable naming the cause."""
    with EmbeddedServer(extra=["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"]) as s:
        async with Client(s.url, timeout=TIMEOUT) as client:
            with pytest.raises(BrokerUnavailable, match="OOM"):  # noqa: PT012
                for _ in range(10_000):  # 100 MB at most: far past the 1 MB limit
                    await client.enqueue("t", b"x" * 10_000)


# -- the admin commands ------------------------------------------------------------------


def admin_commands() -> dict[str, list[str]]:
    """The argv of every admin command, with placeholder arguments, read from the CLI's
    own parser: a new command is tested without being listed here."""
    found: dict[str, list[str]] = {}

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
        if parser.get_default("admin") is not None:
            found[" ".join(path)] = [*path, *_placeholders(parser)]

    walk(build_parser(), [])
    return found


def _placeholders(parser: argparse.ArgumentParser) -> list[str]:
    values = {"queue": "default", "id": TASK, "flow_id": "f1"}
    return [
        str(next(iter(a.choices))) if a.choices else values[a.dest]
        for a in parser._actions
        if not a.option_strings
    ]


def aqueue_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aqueue._cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def assert_one_error_line(done: subprocess.CompletedProcess[str], names: str) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("aqueue: error: "), done.stderr
    assert names in lines[0]


def test_the_admin_commands_are_found() -> None:
    commands = admin_commands()
    assert {"stats", "workers", "cron ls", "queue ls", "task show", "task rm-all"} <= set(commands)


@pytest.mark.parametrize("argv", list(admin_commands().values()), ids=" ".join)
def test_admin_command_on_a_server_that_is_gone_exits_1_with_one_line(argv: list[str]) -> None:
    port = free_port()
    done = aqueue_cli(*argv, "--url", f"redis://127.0.0.1:{port}/0", "--timeout", "1")
    assert_one_error_line(done, f"127.0.0.1:{port}")


def test_admin_command_on_a_cluster_that_is_gone_exits_1_with_one_line() -> None:
    url = gone_cluster()
    assert_one_error_line(aqueue_cli("stats", "--url", url, "--timeout", "1"), url)


def test_admin_command_on_a_frozen_server_exits_1_within_its_timeout() -> None:
    with running_server() as server:
        freeze(server)
        started = time.monotonic()
        done = aqueue_cli("stats", "--url", server.url, "--timeout", "1")
        elapsed = time.monotonic() - started
    assert_one_error_line(done, "did not answer within 1 s")
    assert elapsed < 1 + MARGIN + 2  # plus the interpreter's start


def test_admin_command_refused_by_the_server_exits_1_with_one_line() -> None:
    """A refusal (here: out of memory) is not a lost connection, and still no traceback."""
    with running_server() as server:
        out_of_memory(server)
        done = aqueue_cli("queue", "pause", "default", "--url", server.url)
    assert_one_error_line(done, f"cannot use the server at {server.url}: ")
    assert "maxmemory" in done.stderr


def out_of_memory(server: EmbeddedServer) -> None:
    r = redis.Redis(port=server.port)
    try:
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", 1)
    finally:
        r.close()


# -- the dashboard -----------------------------------------------------------------------

PAGES = ["/", "/workers", "/cron", "/limits", "/queues/default", f"/queues/default/tasks/{TASK}"]
ACTIONS = [
    "/queues/default/pause",
    f"/queues/default/tasks/{TASK}/archive",
    "/queues/default/states/pending/archive-all",
]


class Page(Protocol):
    """What the test client answers (its Response class depends on the installed httpx)."""

    @property
    def status_code(self) -> int: ...
    @property
    def text(self) -> str: ...


def assert_problem(page: Page, says: str) -> None:
    assert page.status_code == 503, page.text
    assert says in page.text
    assert "Traceback" not in page.text


def test_dashboard_pages_answer_503_when_the_server_is_gone() -> None:
    port = free_port()
    with TestClient(dashboard(f"redis://127.0.0.1:{port}/0")) as http:
        for path in PAGES:
            assert_problem(http.get(path), "the server is unreachable")
        live = http.get("/", headers={"x-aqueue-live": "1"})
        assert_problem(live, "the server is unreachable")


def test_dashboard_answers_503_when_the_cluster_is_gone() -> None:
    with TestClient(dashboard(gone_cluster())) as http:
        assert_problem(http.get("/"), "Redis Cluster cannot be connected")


def test_dashboard_pages_and_actions_answer_503_when_the_server_dies() -> None:
    with running_server() as server:
        anyio.run(_enqueue_task, server.url)
        with TestClient(dashboard(server.url, read_only=False)) as http:
            token = _csrf(http.get("/queues/default").text)
            server.kill()
            for path in PAGES:
                assert_problem(http.get(path), "the server is unreachable")
            for path in ACTIONS:
                page = http.post(path, data={"csrf": token})
                assert_problem(page, "the server is unreachable")


def test_dashboard_action_refused_by_the_server_answers_503() -> None:
    with running_server() as server:
        anyio.run(_enqueue_task, server.url)
        with TestClient(dashboard(server.url, read_only=False)) as http:
            token = _csrf(http.get("/queues/default").text)
            out_of_memory(server)
            page = http.post("/queues/default/pause", data={"csrf": token})
            assert_problem(page, "the server could not serve this request")


async def _enqueue_task(url: str) -> None:
    async with Client(url) as client:
        await client.enqueue("t", task_id=TASK)


def _csrf(html: str) -> str:
    match = CSRF.search(html)
    assert match is not None, "no action form on the page"
    return match.group(1)


# -- metrics -----------------------------------------------------------------------------


@pytest.mark.parametrize("situation", ["gone", "killed", "frozen"])
async def test_metrics_collector_reports_a_lost_server_without_a_traceback(
    situation: str, caplog: pytest.LogCaptureFixture
) -> None:
    with running_server() as server:
        url = f"redis://127.0.0.1:{free_port()}/0" if situation == "gone" else server.url
        collector = QueueCollector(url, registry=None, timeout=TIMEOUT, queues=["default"])
        try:
            if situation != "gone":
                await collector.refresh()
                assert collector_up(collector) == 1.0
                lose = server.kill if situation == "killed" else functools.partial(freeze, server)
                await anyio.to_thread.run_sync(lose)
            with anyio.fail_after(TIMEOUT + MARGIN), caplog.at_level(logging.WARNING):
                await collector.refresh()
        finally:
            await collector.inspector.close()
    assert collector_up(collector) == 0.0
    (record,) = [r for r in caplog.records if r.name == "aqueue.metrics"]
    assert "127.0.0.1" in record.getMessage()
    assert not record.exc_info  # BrokerUnavailable, logged without a traceback


def collector_up(collector: QueueCollector) -> float:
    (family,) = [m for m in collector.collect() if m.name == "aqueue_collector_up"]
    return float(family.samples[0].value)
