"""The admin commands of ``aqueue`` (stats, queue, task, workers), run as subprocesses
against a real server, the way an operator runs them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

import aqueue
from aqueue import Context, Inspector, Job, Mux, Worker
from aqueue.server import EmbeddedServer, free_port

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "aqueue._cli"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


async def aqueue_cli(*args: str, url: str | None = None, **env: str) -> Result:
    """Run ``aqueue ARGS... [--url URL]``: options after the positional arguments, as an
    operator types them."""
    environ = {k: v for k, v in os.environ.items() if k != "AQUEUE_URL"}
    environ.update(env)
    argv = [*CLI, *args, *(["--url", url] if url else [])]
    with anyio.fail_after(30):
        done = await anyio.run_process(argv, cwd=ROOT, env=environ, check=False)
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


def rows(table: str) -> dict[str, list[str]]:
    """A table printed by the CLI, as {first column: [columns...]}, header included."""
    return {line.split()[0]: line.split() for line in table.splitlines() if line.strip()}


@pytest.fixture
async def client(aqueue_url: str) -> AsyncIterator[aqueue.Client]:
    async with aqueue.Client(aqueue_url, defaults={"retention": 600}) as c:
        yield c


@pytest.fixture
async def inspector(aqueue_url: str) -> AsyncIterator[Inspector]:
    async with aqueue.Inspector(aqueue_url) as i:
        yield i


# -- stats and queues ----------------------------------------------------------------------


async def test_stats_shows_every_queue_at_a_glance(url: str) -> None:
    async with aqueue.Client(url) as client, aqueue.Inspector(url) as inspector:
        await client.enqueue_many([Job("t", n, queue="emails") for n in range(3)])
        await client.enqueue("t", queue="emails", process_in=3600)
        dead = await client.enqueue("t", queue="reports")
        await inspector.archive_task("reports", dead.id)
        await inspector.pause("reports")

    result = await aqueue_cli("stats", url=url)
    assert result.code == 0, result.err
    table, _, footer = result.out.partition("\n\n")
    lines = table.splitlines()
    header = lines[0]
    assert header.split() == [
        "QUEUE", "PAUSED", "PENDING", "ACTIVE", "SCHEDULED", "RETRY", "ARCHIVED", "COMPLETED",
        "PROCESSED", "FAILED", "LATENCY", "MEMORY", "",
    ][:12]  # fmt: skip
    by_queue = rows(table)
    assert by_queue["emails"][:10] == ["emails", "no", "3", "0", "1", "0", "0", "0", "0", "0"]
    assert by_queue["reports"][:10] == ["reports", "yes", "0", "0", "0", "0", "1", "0", "0", "0"]
    # Numbers are right-aligned under their header.
    end = header.index("PENDING") + len("PENDING")
    assert all(line[end - 1] != " " for line in lines)
    assert "0 live workers" in footer

    as_json = (await aqueue_cli("stats", "--json", url=url)).json()
    assert [(q["queue"], q["pending"], q["scheduled"], q["archived"]) for q in as_json] == [
        ("emails", 3, 1, 0),
        ("reports", 0, 0, 1),
    ]
    assert as_json[1]["paused"] is True


async def test_stats_on_an_empty_server_says_so(aqueue_url: str) -> None:
    result = await aqueue_cli("stats", url=aqueue_url)
    assert (result.code, result.out) == (0, "no queues yet; 0 live workers\n")


async def test_stats_warns_of_a_server_that_evicts_keys() -> None:
    """A server configured to evict (allkeys-lru) would drop tasks when full: `aqueue
    stats` says so, as the worker does at start."""
    with EmbeddedServer(free_port(), extra=["--maxmemory-policy", "allkeys-lru"]) as server:
        async with aqueue.Client(server.url) as c:
            await c.enqueue("t", 1)
        result = await aqueue_cli("stats", url=server.url)
        empty = await aqueue_cli("stats", url=server.url.rsplit("/", 1)[0] + "/3")
    assert result.code == 0
    assert "maxmemory-policy is 'allkeys-lru'" in result.out
    assert "noeviction" in result.out
    assert "maxmemory-policy is 'allkeys-lru'" in empty.out  # before any queue, too


async def test_queue_ls_and_show(aqueue_url: str, client: aqueue.Client) -> None:
    await client.enqueue_many([Job("t", n, queue=q) for n in range(2) for q in ("b", "a")])
    ls = await aqueue_cli("queue", "ls", url=aqueue_url)
    assert (ls.code, ls.out) == (0, "a\nb\n")
    assert (await aqueue_cli("queue", "ls", "--json", url=aqueue_url)).json() == ["a", "b"]

    show = await aqueue_cli("queue", "show", "a", "--days", "3", url=aqueue_url)
    assert show.code == 0, show.err
    fields, _, history = show.out.partition("\n\n")
    assert fields.splitlines()[0].split() == ["queue:", "a"]
    assert rows(fields)["pending:"][:2] == ["pending:", "2"]
    assert rows(fields)["paused:"] == ["paused:", "no"]
    assert len(history.splitlines()) == 1 + 3  # header and three days

    info = (await aqueue_cli("queue", "show", "a", "--json", url=aqueue_url)).json()
    assert (info["queue"], info["pending"], info["paused"]) == ("a", 2, False)
    assert len(info["history"]) == 7
    assert set(info["history"][0]) == {"date", "processed", "failed"}


async def test_an_unknown_queue_exits_1_naming_it(aqueue_url: str, client: aqueue.Client) -> None:
    await client.enqueue("t", queue="real")
    result = await aqueue_cli("queue", "show", "reel", url=aqueue_url)
    assert result.code == 1
    assert result.out == ""
    assert "aqueue: error: no queue 'reel' (known queues: real)" in result.err
    assert "Traceback" not in result.err


async def test_queue_pause_and_resume(aqueue_url: str, inspector: Inspector) -> None:
    paused = await aqueue_cli("queue", "pause", "nightly", url=aqueue_url)
    assert (paused.code, paused.out) == (0, "queue 'nightly' paused\n")
    assert (await inspector.queue_info("nightly")).paused
    resumed = await aqueue_cli("queue", "resume", "nightly", "--json", url=aqueue_url)
    assert resumed.json() == {"queue": "nightly", "paused": False}
    assert not (await inspector.queue_info("nightly")).paused


async def test_queue_rm_needs_force_for_a_queue_with_tasks(
    aqueue_url: str, client: aqueue.Client, inspector: Inspector
) -> None:
    await client.enqueue("t", queue="old")
    refused = await aqueue_cli("queue", "rm", "old", url=aqueue_url)
    assert refused.code == 1
    assert "queue 'old' still holds 1 task(s): add --force" in refused.err
    assert await inspector.queues() == ["old"]
    removed = await aqueue_cli("queue", "rm", "old", "--force", url=aqueue_url)
    assert (removed.code, removed.out) == (0, "queue 'old' removed\n")
    assert await inspector.queues() == []


# -- tasks ---------------------------------------------------------------------------------


async def test_task_ls_pages_through_a_state(aqueue_url: str, client: aqueue.Client) -> None:
    infos = await client.enqueue_many([Job("email:send", {"n": n}) for n in range(5)])
    first = await aqueue_cli("task", "ls", "default", "pending", "--size", "2", url=aqueue_url)
    assert first.code == 0, first.err
    table, _, hint = first.out.partition("\n\n")
    listed = rows(table)
    assert listed["ID"] == ["ID", "TYPE", "ATTEMPT", "ENQUEUED", "PAYLOAD"]
    assert [i for i in listed if i != "ID"] == [infos[0].id, infos[1].id]
    assert listed[infos[0].id][1:3] == ["email:send", "1/26"]
    assert hint == "page 1; next: --page 2\n"
    last = await aqueue_cli(
        "task", "ls", "default", "pending", "--json", "--page", "3", "--size", "2", url=aqueue_url
    )
    assert [(t["id"], t["payload"]) for t in last.json()] == [(infos[4].id, {"n": 4})]
    empty = await aqueue_cli("task", "ls", "default", "archived", url=aqueue_url)
    assert (empty.code, empty.out) == (0, "no archived tasks in queue 'default'\n")


async def test_task_show_prints_everything_about_a_task(
    aqueue_url: str, client: aqueue.Client
) -> None:
    info = await client.enqueue("email:send", {"to": "a@b.c"}, headers={"trace": "x1"})
    shown = await aqueue_cli("task", "show", "default", info.id, url=aqueue_url)
    assert shown.code == 0, shown.err
    lines = (line.partition(" ") for line in shown.out.splitlines())
    fields = {key.rstrip(":"): value.strip() for key, _, value in lines}
    assert fields["id"] == info.id
    assert fields["state"] == "pending"
    assert fields["payload"] == '{"to":"a@b.c"}'
    assert fields["headers"] == "trace=x1"
    shown = await aqueue_cli("task", "show", "default", info.id, "--json", url=aqueue_url)
    task = shown.json()
    assert (task["id"], task["state"], task["payload"]) == (info.id, "pending", {"to": "a@b.c"})


async def test_a_missing_task_exits_1_naming_it(aqueue_url: str, client: aqueue.Client) -> None:
    await client.enqueue("t")
    results: dict[str, Result] = {}

    async def run(command: str) -> None:
        results[command] = await aqueue_cli("task", command, "default", "nope", url=aqueue_url)

    async with anyio.create_task_group() as tg:
        for command in ("show", "run", "archive", "rm", "cancel"):
            tg.start_soon(run, command)
    for command, result in results.items():
        assert result.code == 1, command
        assert result.err == "aqueue: error: no task 'nope' in queue 'default'\n", command


async def test_task_run_archive_rm_and_cancel(
    aqueue_url: str, client: aqueue.Client, inspector: Inspector
) -> None:
    later = await client.enqueue("t", process_in=3600)
    waiting = await client.enqueue("t")

    async def state(task_id: str) -> str:
        return (await inspector.get_task("default", task_id)).state

    run = await aqueue_cli("task", "run", "default", later.id, url=aqueue_url)
    assert (
        run.out
        == f"task {later.id!r} in queue 'default': pending: it runs as soon as a worker is free\n"
    )
    assert await state(later.id) == "pending"
    archive = await aqueue_cli("task", "archive", "default", later.id, "--json", url=aqueue_url)
    assert archive.json() == {"queue": "default", "id": later.id, "state": "archived"}
    assert await state(later.id) == "archived"
    refused = await aqueue_cli("task", "archive", "default", later.id, url=aqueue_url)
    assert refused.code == 1
    assert "it is archived; only pending, scheduled or retry tasks can be archived" in refused.err
    cancel = await aqueue_cli("task", "cancel", "default", waiting.id, url=aqueue_url)
    assert cancel.out.endswith(": archived as cancelled (it was pending)\n")
    assert (await inspector.get_task("default", waiting.id)).last_error == "cancelled"
    rm = await aqueue_cli("task", "rm", "default", waiting.id, url=aqueue_url)
    assert (rm.code, rm.out) == (0, f"task {waiting.id!r} in queue 'default': deleted\n")
    assert [t.id for t in await inspector.list_tasks("default", "archived")] == [later.id]


async def test_bulk_task_commands_say_how_many_moved(
    aqueue_url: str, client: aqueue.Client, inspector: Inspector
) -> None:
    await client.enqueue_many([Job("t", n) for n in range(4)])
    archived = await aqueue_cli("task", "archive-all", "default", "pending", url=aqueue_url)
    assert archived.out == "archived 4 pending tasks of queue 'default'\n"
    ran = await aqueue_cli("task", "run-all", "default", "archived", "--json", url=aqueue_url)
    assert ran.json() == {"queue": "default", "state": "archived", "moved": 4}
    assert (await inspector.queue_info("default")).pending == 4
    removed = await aqueue_cli("task", "rm-all", "default", "pending", url=aqueue_url)
    assert removed.out == "deleted 4 pending tasks of queue 'default'\n"
    assert (await inspector.queue_info("default")).pending == 0


# -- workers -------------------------------------------------------------------------------


async def test_workers_lists_live_workers_and_what_they_run(url: str) -> None:
    mux = Mux()
    started = anyio.Event()

    @mux.task("report:build")
    async def build(ctx: Context, account: int) -> None:
        started.set()
        await anyio.sleep(60)

    async with (
        aqueue.Client(url) as client,
        Worker(mux, url, queues={"reports": 2}, concurrency=3) as worker,
    ):
        info = await client.enqueue("report:build", 42, queue="reports")
        with anyio.fail_after(10):
            await started.wait()
        shown = await aqueue_cli("workers", url=url)
        as_json = (await aqueue_cli("workers", "--json", url=url)).json()
        await client.cancel("reports", info.id)
    assert shown.code == 0, shown.err
    workers, _, active = shown.out.partition("\n\n")
    row = rows(workers)[worker.id]
    assert row[1:6] == [socket.gethostname(), str(os.getpid()), "reports=2", "3", "1"]
    assert rows(active)[worker.id][1:4] == ["reports", info.id, "report:build"]
    (w,) = as_json
    assert (w["id"], w["queues"], w["concurrency"]) == (worker.id, {"reports": 2}, 3)
    assert [t["id"] for t in w["active"]] == [info.id]
    assert (await aqueue_cli("workers", url=url)).out == "no live workers\n"


# -- usage, errors, configuration ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        pytest.param(["queue"], "usage: aqueue queue", id="queue-without-command"),
        pytest.param(["task"], "usage: aqueue task", id="task-without-command"),
        pytest.param(["queue", "show"], "QUEUE", id="missing-queue"),
        pytest.param(["queue", "show", "bad name"], "'bad name'", id="bad-queue-name"),
        pytest.param(["task", "show", "default"], "ID", id="missing-id"),
        pytest.param(["task", "ls", "default", "done"], "'done'", id="unknown-state"),
        pytest.param(["task", "run-all", "default", "pending"], "'pending'", id="unmovable"),
        pytest.param(["task", "rm-all", "default", "active"], "'active'", id="active"),
        pytest.param(["task", "ls", "default", "pending", "--page", "0"], "'0'", id="page-0"),
        pytest.param(["task", "ls", "default", "pending", "--size", "x"], "'x'", id="size"),
        pytest.param(["queue", "show", "a", "--days", "-1"], "-1", id="days"),
        pytest.param(["stats", "--no-such-flag"], "--no-such-flag", id="unknown-flag"),
    ],
)
async def test_wrong_arguments_exit_2_with_usage(args: list[str], named: str) -> None:
    # A closed port: should a usage error slip through, nothing real gets touched.
    result = await aqueue_cli(*args, url=f"redis://127.0.0.1:{free_port()}/0")
    assert result.code == 2, (result.code, result.err)
    assert "usage: aqueue" in result.err
    assert named in result.err
    assert "Traceback" not in result.err


async def test_a_server_that_is_down_exits_1_at_once() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    result = await aqueue_cli("stats", url=url)
    assert time.monotonic() - started < 10
    assert result.code == 1
    assert result.err.startswith("aqueue: error: cannot use the server at redis://:***@127.0.0.1")
    assert "s3cret" not in result.err
    assert "Traceback" not in result.err


async def test_the_url_comes_from_aqueue_url(aqueue_url: str, client: aqueue.Client) -> None:
    await client.enqueue("t", queue="from-env")
    result = await aqueue_cli("queue", "ls", AQUEUE_URL=aqueue_url)
    assert (result.code, result.out) == (0, "from-env\n")


def test_help_lists_the_admin_commands() -> None:
    result = subprocess.run(
        [*CLI, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0
    for command in ("worker", "dev", "stats", "queue", "task", "workers"):
        assert command in result.stdout
