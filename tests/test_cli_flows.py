"""``aqueue flow ls|show|cancel``: workflows as an operator sees them from a shell, run as
subprocesses against a real server holding a failed, a completed, a pending and a
running flow."""

from __future__ import annotations

import time

import anyio
import pytest

import aqueue
from aqueue import Context, Job, Mux, Worker
from aqueue.server import free_port

from .helpers import wait_for
from .test_cli_admin import aqueue_cli, rows

pytestmark = pytest.mark.anyio

FAILED_ERROR = "step f-fail-1 (boom) ended archived: RuntimeError: exploded"


def flow_mux(release: anyio.Event | None = None, error: str = "exploded") -> Mux:
    """``add`` n+1, ``boom`` raises ``error`` (no retry), ``sum`` its inputs, ``hold``
    waits for ``release``: every step in queue "default"."""
    mux = Mux()

    @mux.task("add")
    async def add(ctx: Context, n: int) -> int:
        return n + 1

    @mux.task("boom", max_retry=0)
    async def boom(ctx: Context, n: int) -> None:
        raise RuntimeError(error)

    @mux.task("sum")
    async def total(ctx: Context, xs: list[int]) -> int:
        return sum(xs)

    @mux.task("hold")
    async def hold(ctx: Context, n: int) -> int:
        assert release is not None
        await release.wait()
        return n

    return mux


def failing_flow() -> aqueue.Flow:
    """Steps 0 (add) and 1 (boom) side by side, then 2 (sum) after both."""
    flow = aqueue.Flow()
    x = flow.add(Job("add", 1))
    y = flow.add(Job("boom", 2, max_retry=0))  # by name: the handler's options do not apply
    flow.add(Job("sum"), after=[x, y])
    return flow


def two_adds() -> aqueue.Flow:
    flow = aqueue.Flow()
    flow.add(aqueue.chain(Job("add", 1), Job("add")))
    return flow


async def make_flows(url: str, error: str = "exploded") -> None:
    """Oldest first: ``f-fail`` failed (3/3), ``f-done`` completed (2/2), ``f-wait``
    pending (0/2, no worker serves it). Each is written after the previous one ended, so
    their creation times differ."""
    async with aqueue.Client(url) as client:
        async with Worker(flow_mux(error=error), url):
            fail = await client.enqueue_flow(failing_flow(), flow_id="f-fail")
            with pytest.raises(aqueue.TaskFailed):
                await client.result(fail, timeout=20)
            done = await client.enqueue_flow(two_adds(), flow_id="f-done")
            assert await client.result(done, timeout=20) == 3
        await client.enqueue_flow(two_adds(), flow_id="f-wait")


async def flow_of(url: str, flow_id: str) -> aqueue.FlowInfo:
    async with aqueue.Client(url) as client:
        return await client.flow(flow_id)


# -- ls ------------------------------------------------------------------------------------


async def test_flow_ls_lists_flows_newest_first_with_their_progress(url: str) -> None:
    await make_flows(url)
    shown = await aqueue_cli("flow", "ls", url=url)
    assert (shown.code, shown.err) == (0, ""), shown.err
    lines = shown.out.splitlines()
    assert lines[0].split() == ["FLOW", "STATE", "STEPS", "DONE", "CREATED", "ENDED", "ERROR"]
    listed = rows("\n".join(lines[1:]))
    assert list(listed) == ["f-wait", "f-done", "f-fail"]
    assert listed["f-wait"][1:3] == ["pending", "0/2"]
    assert listed["f-wait"][-2:] == ["-", "-"]  # not ended, no error
    assert listed["f-done"][1:3] == ["completed", "2/2"]
    assert listed["f-fail"][1:3] == ["failed", "3/3"]
    assert lines[3].endswith(FAILED_ERROR)

    as_json = (await aqueue_cli("flow", "ls", "--json", url=url)).json()
    assert [(f["id"], f["state"], f["done"], f["total"]) for f in as_json] == [
        ("f-wait", "pending", 0, 2), ("f-done", "completed", 2, 2), ("f-fail", "failed", 3, 3),
    ]  # fmt: skip
    assert as_json[2]["error"] == FAILED_ERROR
    # A listing gives summaries (`flow show` reads the steps).
    assert all(f["steps"] == [] for f in as_json)


async def test_flow_ls_filters_by_state_and_pages(aqueue_url: str) -> None:
    await make_flows(aqueue_url)
    failed = await aqueue_cli("flow", "ls", "--state", "failed", url=aqueue_url)
    assert list(rows(failed.out)) == ["FLOW", "f-fail"]
    page = await aqueue_cli("flow", "ls", "--size", "1", "--page", "2", url=aqueue_url)
    table, _, footer = page.out.partition("\n\n")
    assert list(rows(table)) == ["FLOW", "f-done"]
    assert footer == "page 2; next: --page 3\n"
    none = await aqueue_cli("flow", "ls", "--state", "running", url=aqueue_url)
    assert (none.code, none.out) == (0, "no running flows\n")
    beyond = await aqueue_cli("flow", "ls", "--page", "2", url=aqueue_url)
    assert beyond.out == "no flows on page 2\n"
    assert (
        await aqueue_cli("flow", "ls", "--state", "cancelled", "--json", url=aqueue_url)
    ).json() == []


async def test_flow_ls_with_no_flows_reads_the_url_from_aqueue_url(aqueue_url: str) -> None:
    result = await aqueue_cli("flow", "ls", AQUEUE_URL=aqueue_url)
    assert (result.code, result.out, result.err) == (0, "no flows\n", "")


# -- show ----------------------------------------------------------------------------------


async def test_flow_show_prints_the_flow_and_each_step(url: str) -> None:
    await make_flows(url)
    shown = await aqueue_cli("flow", "show", "f-fail", url=url)
    assert (shown.code, shown.err) == (0, ""), shown.err
    head, _, steps = shown.out.partition("\n\n")
    facts = dict(line.split(":", 1) for line in head.splitlines())
    named = ("flow", "state", "steps done", "error")
    assert {k: v.strip() for k, v in facts.items() if k in named} == {
        "flow": "f-fail", "state": "failed", "steps done": "3 of 3", "error": FAILED_ERROR,
    }  # fmt: skip
    assert "UTC" in facts["created"] and "UTC" in facts["ended"]
    lines = steps.splitlines()
    assert lines[0].split() == ["#", "STEP", "TYPE", "QUEUE", "STATE", "ERROR"]
    assert [line.split()[:5] for line in lines[1:]] == [
        ["0", "f-fail-0", "add", "default", "completed"],
        ["1", "f-fail-1", "boom", "default", "archived"],
        ["2", "f-fail-2", "sum", "default", "archived"],
    ]
    assert lines[1].endswith("completed  -")
    assert lines[2].endswith("RuntimeError: exploded")
    # The step that never ran names the one whose failure archived it.
    assert lines[3].endswith(f"not run: {FAILED_ERROR}")

    as_json = (await aqueue_cli("flow", "show", "f-fail", "--json", url=url)).json()
    info = await flow_of(url, "f-fail")
    assert (as_json["id"], as_json["state"], as_json["error"]) == (info.id, info.state, info.error)
    assert [(s["id"], s["type"], s["state"]) for s in as_json["steps"]] == [
        (s.id, s.type, s.state) for s in info.steps
    ]


async def test_flow_show_of_a_pending_flow_shows_the_step_waiting_as_scheduled(
    aqueue_url: str,
) -> None:
    await make_flows(aqueue_url)
    shown = await aqueue_cli("flow", "show", "f-wait", url=aqueue_url)
    assert "ended:       -" in shown.out
    assert "error:       -" in shown.out
    steps = rows(shown.out.partition("\n\n")[2])
    assert steps["0"] == ["0", "f-wait-0", "add", "default", "pending", "-"]
    assert steps["1"] == ["1", "f-wait-1", "add", "default", "scheduled", "-"]


# -- cancel --------------------------------------------------------------------------------


async def test_flow_cancel_cancels_a_running_flow(url: str) -> None:
    release = anyio.Event()
    async with aqueue.Client(url) as client, Worker(flow_mux(release), url):
        info = await client.enqueue_flow(aqueue.chain(Job("hold", 1), Job("add")), flow_id="f-run")

        async def holding() -> bool:
            return (await client.flow(info.id)).steps[0].state == "active"

        await wait_for(holding)
        listed = rows((await aqueue_cli("flow", "ls", url=url)).out)
        assert listed["f-run"][1:3] == ["running", "0/2"]
        result = await aqueue_cli("flow", "cancel", "f-run", url=url)
        assert (result.code, result.err) == (0, ""), result.err
        assert result.out == (
            "flow 'f-run': cancelled: its running steps are being cancelled and the steps "
            "not started are archived\n"
        )

        async def ended() -> bool:
            return (await client.flow(info.id)).done == 2

        await wait_for(ended)  # the running step's handler was cancelled
        after = await client.flow(info.id)
    assert after.state == "cancelled"
    assert [s.state for s in after.steps] == ["archived", "archived"]
    assert not release.is_set()


async def test_flow_cancel_of_a_pending_flow_and_of_an_ended_one(aqueue_url: str) -> None:
    await make_flows(aqueue_url)
    cancelled = await aqueue_cli("flow", "cancel", "f-wait", "--json", url=aqueue_url)
    assert cancelled.json() == {"id": "f-wait", "state": "cancelled"}
    info = await flow_of(aqueue_url, "f-wait")
    assert info.state == "cancelled"
    assert [s.state for s in info.steps] == ["archived", "archived"]
    # A flow that ended is left as it is, and the command says so (exit 0).
    for flow_id, state in (("f-done", "completed"), ("f-fail", "failed"), ("f-wait", "cancelled")):
        again = await aqueue_cli("flow", "cancel", flow_id, url=aqueue_url)
        assert (again.code, again.out) == (
            0,
            f"flow {flow_id!r}: already {state}: nothing to cancel\n",
        )
    assert (await flow_of(aqueue_url, "f-done")).state == "completed"


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["show", "cancel"])
async def test_an_unknown_flow_exits_1_in_one_line(aqueue_url: str, command: str) -> None:
    result = await aqueue_cli("flow", command, "nope", url=aqueue_url)
    assert (result.code, result.out) == (1, "")
    assert result.err == "aqueue: error: no flow 'nope' (unknown, or its retention passed)\n"


async def test_flow_ls_on_a_server_that_is_down_exits_1_in_one_line() -> None:
    started = time.monotonic()
    result = await aqueue_cli("flow", "ls", url=f"redis://127.0.0.1:{free_port()}/0")
    assert time.monotonic() - started < 10
    assert result.code == 1
    assert result.err.startswith("aqueue: error: cannot use the server at redis://127.0.0.1")
    assert result.err.count("\n") == 1
    assert "Traceback" not in result.err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        pytest.param(["flow"], "the following arguments are required: COMMAND", id="no-command"),
        pytest.param(["flow", "show"], "FLOW_ID", id="no-id"),
        pytest.param(["flow", "ls", "--state", "done"], "invalid choice: 'done'", id="state"),
        pytest.param(["flow", "ls", "--page", "0"], "'0'", id="page"),
        pytest.param(["flow", "cancel", "a{b}"], "got 'a{b}'", id="bad-id"),
        pytest.param(["flow", "rm", "x"], "invalid choice: 'rm'", id="unknown-command"),
    ],
)
async def test_flow_with_wrong_arguments_exits_2_with_usage(args: list[str], named: str) -> None:
    # A closed port: should a usage error slip through, nothing real gets touched.
    result = await aqueue_cli(*args, AQUEUE_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert result.code == 2, result.err
    assert result.out == ""
    assert result.err.startswith("usage: aqueue flow")
    last = result.err.splitlines()[-1]
    assert last.startswith("aqueue flow") and named in last, result.err
