"""Workflows (SPEC §7, docs/workflows.md) in one worker process, on every server kind:
results passed typed along chains, groups and DAGs, failure propagation, cancel. The
3-master cluster puts the steps' queues on different masters. Crashes across processes:
tests/test_workflow_processes.py."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import pytest

import aqueue
from aqueue import _flowreads
from aqueue._redis.keys import queue_keys

from .helpers import araw_client, wait_for

pytestmark = pytest.mark.anyio

# Queues spread over the cluster's masters (their hash tags land on different slots).
QUEUES = ["default", "images", "reports"]


class Url(msgspec.Struct):
    url: str


QUEUE_OF = {
    "fetch": "images",
    "square": "images",
    "wait": "images",
    "store": "reports",
    "total": "reports",
}


def job(name: str, *payload: Any) -> aqueue.Job[Any]:
    """A step of type ``name`` in its handler's queue (enqueued by name, a step takes
    the queue given here)."""
    options: dict[str, Any] = {"queue": QUEUE_OF.get(name, "default")}
    if name == "boom":
        options["max_retry"] = 0
    if payload:
        return aqueue.Job(name, payload[0], **options)
    return aqueue.Job(name, **options)


def _mux(log: list[tuple[str, Any]]) -> aqueue.Mux:
    mux = aqueue.Mux()

    @mux.task("fetch", queue="images")
    async def fetch(ctx: aqueue.Context, u: Url) -> str:
        log.append(("fetch", u.url))
        return f"page of {u.url}"

    @mux.task("parse")
    async def parse(ctx: aqueue.Context, page: str) -> int:
        log.append(("parse", page))
        return len(page)

    @mux.task("store", queue="reports")
    async def store(ctx: aqueue.Context, n: int) -> str:
        log.append(("store", (n, ctx.flow_id)))
        return f"stored {n}"

    @mux.task("square", queue="images")
    async def square(ctx: aqueue.Context, x: int) -> int:
        log.append(("square", x))
        return x * x

    @mux.task("total", queue="reports")
    async def total(ctx: aqueue.Context, xs: list[int]) -> int:
        log.append(("total", xs))
        return sum(xs)

    @mux.task("labelled")
    async def labelled(ctx: aqueue.Context, label: str) -> str:
        log.append(("labelled", (label, ctx.inputs)))
        return f"{label}:{ctx.inputs}"

    @mux.task("boom", max_retry=0)
    async def boom(ctx: aqueue.Context) -> None:
        log.append(("boom", None))
        raise RuntimeError("exploded")

    @mux.task("wait", queue="images")
    async def wait(ctx: aqueue.Context) -> None:
        log.append(("wait", None))
        await anyio.sleep(30)

    return mux


@pytest.fixture
async def client(url: str) -> AsyncIterator[aqueue.Client]:
    async with aqueue.Client(url) as c:
        yield c


async def test_a_chain_passes_each_result_to_the_next_step(url: str, client: aqueue.Client) -> None:
    log: list[tuple[str, Any]] = []
    mux = _mux(log)
    flow = aqueue.chain(job("fetch", Url("https://example.com")), job("parse"), job("store"))
    async with aqueue.Worker(mux, url, queues=dict.fromkeys(QUEUES, 1)):
        info = await client.enqueue_flow(flow)
        assert info.total == 3 and len(info.steps) == 3
        assert await client.result(info, timeout=20) == "stored 27"  # len("page of ...")
        done = await client.flow(info.id)
    assert [name for name, _ in log] == ["fetch", "parse", "store"]
    assert log[2][1] == (27, info.id)
    assert done.state == "completed" and done.done == 3
    assert [s.state for s in done.steps] == ["completed"] * 3
    assert [s.queue for s in done.steps] == ["images", "default", "reports"]
    assert done.completed_at is not None


async def test_a_group_fans_out_and_its_results_fan_in_as_a_list(
    url: str, client: aqueue.Client
) -> None:
    log: list[tuple[str, Any]] = []
    flow = aqueue.chain(aqueue.group(job("square", i) for i in range(20)), job("total"))
    async with aqueue.Worker(_mux(log), url, queues=dict.fromkeys(QUEUES, 1), concurrency=8):
        info = await client.enqueue_flow(flow)
        assert await client.result(info.id, timeout=20) == sum(i * i for i in range(20))
    totals = [x for name, x in log if name == "total"]
    assert totals == [[i * i for i in range(20)]]  # once, in the group's order
    # The fan-in started only after every member ended.
    assert [name for name, _ in log].index("total") == 20


async def test_a_dag_diamond_waits_for_both_branches(url: str, client: aqueue.Client) -> None:
    log: list[tuple[str, Any]] = []
    flow = aqueue.Flow()
    a = flow.add(job("square", 3))
    b = flow.add(job("square"), after=a)
    c = flow.add(job("labelled", "c"), after=a)
    flow.add(job("labelled", "d"), after=[b, c])
    async with aqueue.Worker(_mux(log), url, queues=dict.fromkeys(QUEUES, 1)):
        info = await client.enqueue_flow(flow)
        result = await client.result(info, timeout=20)
    # d has a payload of its own: its inputs come as ctx.inputs, in after= order.
    assert result == "d:[81, 'c:[9]']"
    assert log[-1] == ("labelled", ("d", [81, "c:[9]"]))


async def test_a_failed_step_archives_its_dependents_and_independent_branches_finish(
    url: str, client: aqueue.Client
) -> None:
    log: list[tuple[str, Any]] = []
    flow = aqueue.Flow()
    bad = flow.add(job("boom"))
    after_bad = flow.add(job("square", 2), after=bad)
    flow.add(job("square", 5), after=after_bad)
    ok = flow.add(job("square", 7))
    flow.add(job("square"), after=ok)
    async with aqueue.Worker(_mux(log), url, queues=dict.fromkeys(QUEUES, 1)):
        info = await client.enqueue_flow(flow)
        with pytest.raises(aqueue.TaskFailed, match=r"boom.*exploded"):
            await client.result(info, timeout=20)
        done = await client.flow(info.id)
    assert done.state == "failed"
    states = [s.state for s in done.steps]
    assert states == ["archived", "archived", "archived", "completed", "completed"]
    # The dependents never ran, and say which step's failure archived them.
    assert {x for name, x in log if name == "square"} == {7, 49}
    assert done.steps[1].last_error and f"{info.id}-0 (boom)" in done.steps[1].last_error
    assert done.steps[2].last_error and "boom" in done.steps[2].last_error


async def test_cancelling_a_flow_cancels_running_steps_and_archives_the_rest(
    url: str, client: aqueue.Client
) -> None:
    log: list[tuple[str, Any]] = []
    flow = aqueue.chain(job("square", 4), job("wait"), job("square"))
    async with aqueue.Worker(_mux(log), url, queues=dict.fromkeys(QUEUES, 1)):
        info = await client.enqueue_flow(flow)
        await wait_for(lambda: ("wait", None) in log, timeout=20)
        async with aqueue.Inspector(url) as inspector:
            await inspector.cancel_flow(info.id)
        with pytest.raises(aqueue.TaskFailed, match="cancelled"):
            await client.result(info, timeout=20)
        done = await client.flow(info.id)
    assert done.state == "cancelled"
    assert [s.state for s in done.steps] == ["completed", "archived", "archived"]
    assert [name for name, _ in log] == ["square", "wait"]


async def test_flows_are_listed_newest_first(url: str, client: aqueue.Client) -> None:
    log: list[tuple[str, Any]] = []
    async with aqueue.Worker(_mux(log), url, queues=dict.fromkeys(QUEUES, 1)):
        first = await client.enqueue_flow(job("square", 1))
        await client.result(first, timeout=20)
        second = await client.enqueue_flow(job("boom"), flow_id="nightly-2026-12-05")
        with pytest.raises(aqueue.TaskFailed):
            await client.result(second, timeout=20)
    async with aqueue.Inspector(url) as inspector:
        flows = await inspector.flows()
        failed = await inspector.flows(state="failed")
    assert [f.id for f in flows] == [second.id, first.id]
    assert [f.id for f in failed] == ["nightly-2026-12-05"]


async def test_flow_summaries_agree_with_whole_reads_in_every_state(
    url: str, client: aqueue.Client
) -> None:
    """Listings read summaries (no steps, a few fields per flow): their state, progress
    and error match what reading each flow whole says, and Inspector.flows still gives
    every listed flow's steps."""
    log: list[tuple[str, Any]] = []
    broker = client._broker
    waiting = await client.enqueue_flow(
        aqueue.chain(aqueue.Job("square", 1, queue="parked"), job("square")), flow_id="f-waiting"
    )
    async with aqueue.Worker(_mux(log), url, queues=dict.fromkeys(QUEUES, 1)):
        done = await client.enqueue_flow(aqueue.chain(job("square", 2), job("square")))
        assert await client.result(done, timeout=20) == 16
        failed = await client.enqueue_flow(
            aqueue.chain(job("square", 3), job("boom"), job("total"))
        )
        with pytest.raises(aqueue.TaskFailed):
            await client.result(failed, timeout=20)
        running = await client.enqueue_flow(aqueue.chain(job("wait"), job("square")))
        await wait_for(lambda: ("wait", None) in log, timeout=20)

        async def compare(expected: dict[str, str]) -> None:
            summaries = await _flowreads.list_flows(broker, steps=False)
            async with aqueue.Inspector(url) as inspector:
                whole = await inspector.flows()
            assert {f.id: f.state for f in summaries} == expected
            assert all(f.steps == [] for f in summaries)
            for s, w in zip(summaries, whole, strict=True):
                assert (s.id, s.state, s.done, s.total, s.error, s.created_at, s.completed_at) == (
                    w.id, w.state, w.done, w.total, w.error, w.created_at, w.completed_at
                )  # fmt: skip
                assert len(w.steps) == w.total
            for state in set(expected.values()):
                listed = await _flowreads.list_flows(broker, state, steps=False)
                assert [f.id for f in listed] == [f for f, st in expected.items() if st == state]

        await compare({
            running.id: "running", failed.id: "failed", done.id: "completed",
            waiting.id: "pending",
        })  # fmt: skip
        async with aqueue.Inspector(url) as inspector:
            await inspector.cancel_flow(running.id)
        with pytest.raises(aqueue.TaskFailed, match="cancelled"):
            await client.result(running, timeout=20)
        await compare({
            running.id: "cancelled", failed.id: "failed", done.id: "completed",
            waiting.id: "pending",
        })  # fmt: skip
    (summary,) = await _flowreads.list_flows(broker, "failed", steps=False)
    assert summary.error is not None and "(boom)" in summary.error


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: aqueue.chain(), "at least one step"),
        (lambda: aqueue.chain(aqueue.Job("t", task_id="x")), "task_id"),
        (lambda: aqueue.chain(aqueue.Job("t", unique=60)), "unique"),
        (lambda: aqueue.group([1]), "got 1"),  # type: ignore[list-item]
    ],
)
async def test_bad_flows_are_refused_and_write_nothing(
    url: str, client: aqueue.Client, build: Any, match: str
) -> None:
    with pytest.raises(aqueue.InvalidOption, match=match):
        await client.enqueue_flow(build())
    async with aqueue.Inspector(url) as inspector:
        assert await inspector.flows() == []


def test_a_flow_nested_into_itself_or_a_foreign_handle_is_refused() -> None:
    flow = aqueue.Flow()
    with pytest.raises(aqueue.InvalidOption, match="itself"):
        flow.add(flow)
    other = aqueue.Flow()
    handle = other.add(aqueue.Job("t"))
    with pytest.raises(aqueue.InvalidOption, match="handles"):
        flow.add(aqueue.Job("t"), after=handle)
    outer = aqueue.Flow()
    outer.add(aqueue.Job("t"))
    inner = aqueue.chain(aqueue.Job("t"), outer)
    outer.add(inner)
    from aqueue._flow import compile_flow

    with pytest.raises(aqueue.InvalidOption, match="nested into itself"):
        compile_flow(outer)


async def test_finished_flows_leave_nothing_behind_once_their_retention_passed(
    aqueue_url: str,
) -> None:
    """A churn of flows (fan-outs, failures): once their retention passed, no key of
    theirs is left, their steps are gone from the queues, and the list forgets them."""
    url = aqueue_url
    log: list[tuple[str, Any]] = []
    async with aqueue.Client(url) as client, aqueue.Worker(_mux(log), url, queues=QUEUES):
        infos = []
        for n in range(30):
            flow = aqueue.chain(aqueue.group(job("square", i) for i in range(5)), job("total"))
            if n % 5 == 0:
                flow = aqueue.chain(job("boom"), job("square", 1))
            infos.append(await client.enqueue_flow(flow, retention=0.5))
        for info in infos:
            # A flow may be over and past its half-second retention already.
            with contextlib.suppress(aqueue.TaskFailed, aqueue.TaskNotFound):
                await client.result(info, timeout=30)
        r = araw_client(url)
        try:

            async def settled() -> bool:
                await _flowreads.prune(client._broker)
                keys = [k async for k in r.scan_iter(match="aq:{f:*")]
                return not keys and await r.zcard("aq:flows") == 0

            await wait_for(settled, timeout=20)
            for queue in QUEUES:
                k = queue_keys("aq", queue)
                assert await r.llen(k.outbox) == 0
                # Completed steps kept for the flow's retention, then deleted by the janitor.
                await wait_for(lambda k=k: _hlen_is_zero(r, k.results), timeout=20)  # type: ignore[misc]
            # Forgotten by a worker's idle sweep (every 5 s) once the flows ended.
            await wait_for(lambda: _scard_is_zero(r, "aq:flows:due"), timeout=30)
        finally:
            await r.aclose()


async def _hlen_is_zero(r: Any, key: str) -> bool:
    return int(await r.hlen(key)) == 0


async def _scard_is_zero(r: Any, key: str) -> bool:
    return int(await r.scard(key)) == 0
