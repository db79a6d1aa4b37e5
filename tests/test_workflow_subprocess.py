"""Workflows (SPEC §7, docs/workflows.md) run by real `aqueue worker` processes, on every
server kind: results passed typed from process to process along a chain, a group and a
DAG diamond; no step started before each of its dependencies ended; a failure archiving
its dependents while an independent branch finishes; a cancel reaching a step running
in another process; and nothing left of a churn of flows once their retention passed.
The in-process versions are in tests/test_workflows.py; a worker killed at each point
of a hand-over, in tests/test_workflow_processes.py.

The steps (tests/apps/workflow_app.py) record on the recording server (the
``aqueue_url`` fixture) their starts and, as they return, what they received and their
start and end drawn from one server-side counter: the test judges order by that
counter, whichever process ran which step. On the cluster the steps' queues (``QUEUES``)
are on different masters from each other and from the flows' own keys.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

import aqueue
from aqueue import _flowreads
from aqueue._flow import Step
from aqueue._redis.keys import queue_keys

from .apps.workflow_app import (
    CANCELLED,
    QUEUES,
    RUNS,
    STARTS,
    Nap,
    Run,
    Url,
    boom,
    fetch,
    labelled,
    nap,
    pair,
    parse,
    square,
    store,
    total,
    wait,
)
from .helpers import araw_client, text, wait_for

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
APP = "tests.apps.workflow_app:worker"
# Seconds a flow gets to end: a correctness bound, far above the ~1 s these take.
FLOW_TIMEOUT = 60.0


@contextmanager
def workers(url: str, records_url: str, n: int = 2) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``n`` `aqueue worker` processes serving ``QUEUES`` of ``url``; on the way out,
    SIGTERM to each, then wait (SIGKILL if one has not stopped in 20 s)."""
    env = {**os.environ, "AQUEUE_URL": url, "FLOWTEST_URL": records_url}
    command = [sys.executable, "-m", "aqueue._cli", "worker", APP]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL))
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise


class Records:
    """What the steps recorded on the recording server."""

    def __init__(self, url: str) -> None:
        self.r = redis.Redis.from_url(url)

    def starts(self) -> list[str]:
        """Task ids, in the order their handlers started."""
        return [str(text(x)) for x in self.r.lrange(STARTS, 0, -1)]

    def runs(self) -> dict[str, Run]:
        """Each step's run, by task id; a step that ran twice fails the test."""
        runs = [msgspec.json.decode(x, type=Run) for x in self.r.lrange(RUNS, 0, -1)]
        twice = [i for i, n in Counter(run.task_id for run in runs).items() if n > 1]
        assert not twice, f"steps ran more than once: {twice}"
        return {run.task_id: run for run in runs}

    def cancelled(self) -> list[str]:
        """``<task id>|<ctx.cancelled_by>`` of each handler cancelled while running."""
        return [str(text(x)) for x in self.r.lrange(CANCELLED, 0, -1)]


@pytest.fixture
def records(aqueue_url: str) -> Iterator[Records]:
    """The recording server, empty (``aqueue_url`` is flushed before each test)."""
    rec = Records(aqueue_url)
    try:
        yield rec
    finally:
        rec.r.close()


def step_ids(info: aqueue.FlowInfo) -> list[str]:
    """Step task ids, in the order the steps were added."""
    return [s.id for s in info.steps]


async def test_results_pass_typed_between_processes_along_a_chain_a_group_and_a_diamond(
    url: str, aqueue_url: str, records: Records
) -> None:
    chain = aqueue.chain(
        aqueue.Job(fetch, Url("https://example.com")), aqueue.Job(parse), aqueue.Job(store)
    )
    fan = aqueue.chain(aqueue.group(aqueue.Job(square, i) for i in range(10)), aqueue.Job(total))
    diamond = aqueue.Flow()
    a = diamond.add(aqueue.Job(square, 3))
    b = diamond.add(aqueue.Job(square), after=a)
    c = diamond.add(aqueue.Job(labelled, "c"), after=a)
    diamond.add(aqueue.Job(pair), after=[b, c])
    async with aqueue.Client(url) as client:
        with workers(url, aqueue_url):
            infos = [await client.enqueue_flow(f) for f in (chain, fan, diamond)]
            results = [await client.result(i, timeout=FLOW_TIMEOUT) for i in infos]
        flows = [await client.flow(i.id) for i in infos]
    assert results == ["stored 27", sum(i * i for i in range(10)), "81+c:[9]"]
    for flow in flows:
        assert flow.state == "completed" and flow.done == flow.total
        assert {s.state for s in flow.steps} == {"completed"}
    runs = records.runs()  # each step ran once
    assert set(runs) == {i for flow in flows for i in step_ids(flow)}

    # The chain: fetch's Page reached parse as a Page, decoded by parse's annotation.
    fetched, parsed, stored = (runs[i] for i in step_ids(flows[0]))
    assert (fetched.received_type, fetched.received) == ("Url", {"url": "https://example.com"})
    assert (parsed.received_type, parsed.received) == (
        "Page",
        {"url": "https://example.com", "size": 27},
    )
    assert (stored.received_type, stored.received, stored.flow_id) == ("int", 27, flows[0].id)
    assert [s.queue for s in flows[0].steps] == ["images", "default", "reports"]

    # The group fanned in once, as a list in the group's order, after every member.
    *members, fan_in = (runs[i] for i in step_ids(flows[1]))
    assert [m.received for m in members] == list(range(10))
    assert (fan_in.received_type, fan_in.received) == ("list", [i * i for i in range(10)])
    assert fan_in.start > max(m.end for m in members)

    # The diamond: d, without a payload, got [result of b, result of c] as its payload;
    # c, with a payload of its own, got a's result in ctx.inputs.
    ra, rb, rc, rd = (runs[i] for i in step_ids(flows[2]))
    assert (rb.received, rc.received, rc.inputs) == (9, "c", [9])
    assert (rd.received_type, rd.received) == ("tuple", [81, "c:[9]"])
    assert rd.start > max(rb.end, rc.end) and min(rb.start, rc.start) > ra.end


async def test_no_step_starts_before_every_one_of_its_dependencies_ended(
    url: str, aqueue_url: str, records: Records
) -> None:
    """A DAG whose branches sleep for different times, over three queues: each step's
    recorded start comes after the recorded end of each of its dependencies, and it
    received their results in the order of its ``after``."""
    # label: (seconds, queue, dependencies)
    dag: dict[str, tuple[float, str, list[str]]] = {
        "a": (0.1, "default", []),
        "b": (0.3, "images", ["a"]),
        "c": (0.05, "reports", ["a"]),
        "e": (0.2, "default", ["a"]),
        "d": (0.05, "images", ["b", "c"]),
        "g": (0.15, "reports", []),
        "h": (0.0, "default", ["g", "c"]),
        "f": (0.0, "reports", ["d", "e", "h"]),
    }
    flow = aqueue.Flow()
    handles: dict[str, Step] = {}
    for label, (seconds, queue, after) in dag.items():
        job = aqueue.Job(nap, Nap(label, seconds), queue=queue)
        handles[label] = flow.add(job, after=[handles[x] for x in after] or None)
    async with aqueue.Client(url) as client:
        with workers(url, aqueue_url):
            info = await client.enqueue_flow(flow)
            assert await client.result(info, timeout=FLOW_TIMEOUT) == "f"
    runs = records.runs()
    by_label = {label: runs[f"{info.id}-{i}"] for i, label in enumerate(dag)}
    for label, (_, _, after) in dag.items():
        run = by_label[label]
        for dep in after:
            assert run.start > by_label[dep].end, f"{label} started before {dep} ended"
        assert run.inputs == after
    # b and e ran at the same time: the checks above are not those of a serial run.
    b, e = by_label["b"], by_label["e"]
    assert b.start < e.end and e.start < b.end


async def test_a_failed_step_archives_its_dependents_unstarted_and_an_independent_branch_finishes(
    url: str, aqueue_url: str, records: Records
) -> None:
    flow = aqueue.Flow()
    bad = flow.add(aqueue.Job(boom))  # max_retry=0: its first failure archives it
    after_bad = flow.add(aqueue.Job(square, 2), after=bad)
    flow.add(aqueue.Job(square, 5), after=after_bad)
    slow = flow.add(aqueue.Job(nap, Nap("slow", 0.5), queue="reports"))
    flow.add(aqueue.Job(labelled, "after-slow"), after=slow)
    flow.add(aqueue.Job(nap, Nap("mixed")), after=[slow, after_bad])
    async with aqueue.Client(url) as client:
        with workers(url, aqueue_url):
            info = await client.enqueue_flow(flow)
            with pytest.raises(aqueue.TaskFailed, match=rf"{info.id}-0.*boom.*exploded"):
                await client.result(info, timeout=FLOW_TIMEOUT)
        done = await client.flow(info.id)
    ids = step_ids(done)
    assert done.state == "failed" and done.done == done.total == 6
    states = [s.state for s in done.steps]
    assert states == ["archived", "archived", "archived", "completed", "completed", "archived"]
    # The dependents, direct or not, never started; each names the step that failed.
    assert sorted(records.starts()) == sorted([ids[0], ids[3], ids[4]])
    for i in (1, 2, 5):
        error = done.steps[i].last_error
        assert error and f"{ids[0]} (boom)" in error, (i, error)
    # The independent branch ran to its end, in order.
    runs = records.runs()
    assert set(runs) == {ids[3], ids[4]}
    assert runs[ids[4]].start > runs[ids[3]].end and runs[ids[4]].inputs == ["slow"]


async def test_cancelling_a_flow_cancels_its_step_running_in_another_process(
    url: str, aqueue_url: str, records: Records
) -> None:
    flow = aqueue.Flow()
    first = flow.add(aqueue.Job(square, 4))
    waiting = flow.add(aqueue.Job(wait), after=first)  # sleeps 30 s unless cancelled
    flow.add(aqueue.Job(square), after=waiting)
    flow.add(aqueue.Job(labelled, "after-wait"), after=waiting)
    async with aqueue.Client(url) as client:
        with workers(url, aqueue_url):
            info = await client.enqueue_flow(flow)
            ids = step_ids(info)
            await wait_for(lambda: ids[1] in records.starts(), timeout=30)
            async with aqueue.Inspector(url) as inspector:
                await inspector.cancel_flow(info.id)
            with pytest.raises(aqueue.TaskFailed, match="cancelled"):
                await client.result(info, timeout=FLOW_TIMEOUT)
            # The handler itself was cancelled, well before its 30 s sleep was over.
            await wait_for(lambda: records.cancelled() == [f"{ids[1]}|cancel"], timeout=20)
        done = await client.flow(info.id)
    assert done.state == "cancelled"
    assert [s.state for s in done.steps] == ["completed", "archived", "archived", "archived"]
    assert records.starts() == ids[:2]  # the steps after the cancelled one never started


async def test_a_churn_of_flows_leaves_nothing_behind_once_their_retention_passed(
    url: str, aqueue_url: str
) -> None:
    """Fan-outs and failures, 30 flows with a half-second retention, run by two worker
    processes: then no key of a flow is left on any master, the list of flows forgets
    them, and their steps are gone from the queues (deleted by the workers' janitor)."""
    async with aqueue.Client(url) as client:
        with workers(url, aqueue_url):
            infos = []
            for n in range(30):
                flow = aqueue.chain(
                    aqueue.group(aqueue.Job(square, i) for i in range(5)), aqueue.Job(total)
                )
                if n % 5 == 0:
                    flow = aqueue.chain(aqueue.Job(boom), aqueue.Job(square, 1))
                infos.append(await client.enqueue_flow(flow, retention=0.5))
            for info in infos:
                # A flow may be over and past its half-second retention already.
                with contextlib.suppress(aqueue.TaskFailed, aqueue.TaskNotFound):
                    await client.result(info, timeout=FLOW_TIMEOUT)
            r = araw_client(url)
            try:

                async def settled() -> bool:
                    await _flowreads.prune(client._broker)
                    keys = [k async for k in r.scan_iter(match="aq:{f:*")]
                    return not keys and await r.zcard("aq:flows") == 0

                await wait_for(settled, timeout=30, every=0.05)
                for queue in QUEUES:
                    k = queue_keys("aq", queue)
                    assert await r.llen(k.outbox) == 0
                    # Completed steps are kept for the flow's retention, then deleted by
                    # a worker's janitor (after each reaper pass, at most 5 s apart).
                    await wait_for(lambda k=k: _is_empty(r, k.results), timeout=30, every=0.05)  # type: ignore[misc]
                # An ended flow leaves the set of flows with pending hand-overs at a
                # worker's next idle sweep (5 s after its last wake), not at its end.
                await wait_for(lambda: _scard_is_zero(r, "aq:flows:due"), timeout=30, every=0.05)
            finally:
                await r.aclose()


async def _is_empty(r: Any, key: str) -> bool:
    return int(await r.hlen(key)) == 0


async def _scard_is_zero(r: Any, key: str) -> bool:
    return int(await r.scard(key)) == 0
