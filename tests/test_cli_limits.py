"""``aqueue limits``: the declared rate and concurrency limits and how busy they are, run
as a subprocess against a real server while a worker holds some of their slots."""

from __future__ import annotations

import time

import anyio
import pytest

import aqueue
from aqueue import Context, Mux, Worker
from aqueue.server import free_port

from .helpers import wait_for
from .test_cli_admin import aqueue_cli, rows

pytestmark = pytest.mark.anyio


async def test_limits_lists_each_limit_with_its_usage(url: str) -> None:
    mux = Mux()
    release = anyio.Event()
    started: list[str] = []
    mux.limit_queue("bulk", concurrency_limit=2)
    mux.limit_queue("default", rate_limit=aqueue.Rate(3, per=1.5))

    @mux.task("report", concurrency_limit=1, rate_limit="90/m", limit_key=lambda t: t)
    async def report(ctx: Context, tenant: str) -> None:
        started.append(tenant)
        await release.wait()

    @mux.task("import", queue="bulk")
    async def load(ctx: Context, n: int) -> None:
        started.append("bulk")
        await release.wait()

    async with aqueue.Client(url) as client:
        await client.enqueue_many([aqueue.Job(report, t) for t in ("acme", "acme", "initech")])
        await client.enqueue_many([aqueue.Job(load, n) for n in range(4)])
    async with (
        Worker(mux, url, queues=["default", "bulk"], concurrency=10),
        aqueue.Inspector(url) as inspector,
    ):
        # One report per tenant and two imports run; the rest are held back.
        await wait_for(lambda: len(started) == 4)

        async def held_back() -> bool:
            return all(x.held_back for x in await inspector.limits() if x.queue == "bulk")

        await wait_for(held_back)
        shown = await aqueue_cli("limits", url=url)
        as_json = (await aqueue_cli("limits", "--json", url=url)).json()
        release.set()

    assert shown.code == 0, shown.err
    table, _, footer = shown.out.partition("\n\n")
    lines = table.splitlines()
    assert lines[0].split() == [
        "QUEUE", "TASK", "TYPE", "RATE", "CONCURRENCY", "RUNNING", "KEYS", "HELD", "BACK",
    ]  # fmt: skip
    listed = [line.split() for line in lines[1:]]
    assert [row[:6] for row in listed] == [
        ["bulk", "(queue)", "-", "2", "2/2", "0"],
        ["default", "(queue)", "3/1.5s", "-", "-", "2"],
        # Per key: two tenants busy, one slot each.
        ["default", "report", "90/m", "1", "2/2", "2"],
    ]
    assert int(listed[0][6]) >= 1  # the bulk queue's limit held back the other imports
    assert "HELD BACK" in footer
    # JSON: every LimitInfo field, a Rate as its limit and its window in seconds.
    fields = ["queue", "task_type", "rate_limit", "concurrency_limit", "running", "keys"]
    assert [[x[f] for f in fields] for x in as_json] == [
        ["bulk", None, None, 2, 2, 0],
        ["default", None, {"limit": 3, "per": 1.5}, None, 0, 2],
        ["default", "report", {"limit": 90, "per": 60.0}, 1, 2, 2],
    ]
    assert as_json[0]["held_back"] >= 1


async def test_limits_with_nothing_declared_says_so(aqueue_url: str) -> None:
    async with aqueue.Client(aqueue_url) as client:
        await client.enqueue("t")  # a queue, but no limits
    result = await aqueue_cli("limits", url=aqueue_url)
    assert (result.code, result.err) == (0, "")
    assert result.out == "no limits declared (a worker declares its mux's limits when it starts)\n"
    assert (await aqueue_cli("limits", "--json", url=aqueue_url)).json() == []


async def test_limits_reads_the_url_from_aqueue_url(aqueue_url: str) -> None:
    mux = Mux()
    mux.limit_queue("bulk", concurrency_limit=3)
    async with Worker(mux, aqueue_url, queues=["bulk"]):
        pass  # the worker declared its limits at start
    result = await aqueue_cli("limits", AQUEUE_URL=aqueue_url)
    assert result.code == 0, result.err
    assert rows(result.out.partition("\n\n")[0])["bulk"][1:5] == ["(queue)", "-", "3", "0/3"]


async def test_limits_on_a_server_that_is_down_exits_1_in_one_line() -> None:
    started = time.monotonic()
    result = await aqueue_cli("limits", url=f"redis://127.0.0.1:{free_port()}/0")
    assert time.monotonic() - started < 10
    assert result.code == 1
    assert result.out == ""
    assert result.err.startswith("aqueue: error: cannot use the server at redis://127.0.0.1")
    assert result.err.count("\n") == 1
    assert "Traceback" not in result.err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        pytest.param(["limits", "bulk"], "unrecognized arguments: bulk", id="argument"),
        pytest.param(["limits", "--no-such-flag"], "--no-such-flag", id="unknown-flag"),
        pytest.param(["limits", "--timeout", "0"], "'0'", id="bad-timeout"),
    ],
)
async def test_limits_with_wrong_arguments_exits_2_with_usage(args: list[str], named: str) -> None:
    # A closed port: should a usage error slip through, nothing real gets touched.
    result = await aqueue_cli(*args, url=f"redis://127.0.0.1:{free_port()}/0")
    assert result.code == 2, (result.code, result.err)
    assert "usage: aqueue" in result.err
    assert named in result.err
    assert "Traceback" not in result.err


async def test_help_lists_the_limits_command() -> None:
    result = await aqueue_cli("--help")
    assert result.code == 0
    assert "limits" in result.out
    described = await aqueue_cli("limits", "--help")
    assert "--json" in described.out
