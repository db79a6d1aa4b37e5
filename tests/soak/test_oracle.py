"""The soak's oracle catches what it claims to: each test writes, on a real server, an
end state with exactly one broken promise, and the oracle must name it (and must pass
the same state with the promise kept). A soak that passes proves something only if its
judge fails these."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from aqueue._redis.keys import QueueKeys

from .app import RATE, TENANT_SLOTS
from .oracle import Oracle, Verdict
from .plan import Done
from .record import ENQUEUED, EVENTS, SEQ, Enqueued, Event, Recorder, write_enqueued

pytestmark = pytest.mark.anyio

Q = QueueKeys("aq", "default")
T = 1_000_000.0  # a time, in seconds


@pytest.fixture
async def r(aqueue_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(aqueue_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


class World:
    """An end state under construction: tasks on the server, records beside them."""

    def __init__(self, r: aioredis.Redis, url: str) -> None:
        self.r = r
        self.rec = Recorder(url)
        self.faults: list[Done] = []

    async def completed(self, task_id: str, queue: QueueKeys = Q, attempts: int = 1) -> None:
        await self.r.hset(queue.states, task_id, "completed")
        await self.r.hset(queue.tasks, task_id, "x")
        await self.r.hincrby(queue.stats, "p", attempts)
        await self.r.hincrby(queue.stats, "f", attempts - 1)

    async def enqueued(
        self, task_id: str, queue: str = "default", kind: str = "plain", **kw: object
    ) -> None:
        await write_enqueued(self.r, [Enqueued(task_id, queue, kind, T, **kw)])  # type: ignore[arg-type]

    async def run(
        self, task_id: str, t0: float, t1: float | None, *, pid: int = 1, type_: str = "soak:work",
        key: str = "", inputs: list[str] | None = None,
    ) -> None:  # fmt: skip
        await self.rec.event(Event("s", task_id, type_, pid, t0, 0, key, inputs or []))
        if t1 is not None:
            await self.rec.event(Event("f", task_id, type_, pid, t1, 0, key))

    async def judge(self) -> Verdict:
        return await Oracle(self.r, self.r, self.faults).judge()


@pytest.fixture
async def w(r: aioredis.Redis, aqueue_url: str) -> AsyncIterator[World]:
    world = World(r, aqueue_url)
    try:
        yield world
    finally:
        await world.rec.aclose()


def only(verdict: Verdict, fragment: str) -> None:
    assert len(verdict.violations) == 1, verdict.violations
    assert fragment in verdict.violations[0], verdict.violations


async def test_a_clean_end_state_passes(w: World) -> None:
    await w.completed("t1")
    await w.enqueued("t1")
    await w.run("t1", T, T + 0.1)
    verdict = await w.judge()
    assert verdict.ok, verdict.violations
    assert verdict.figures["completed"] == 1


async def test_a_task_whose_enqueue_returned_but_that_never_completed_is_lost(w: World) -> None:
    await w.enqueued("t1")
    await w.r.hset(Q.states, "t1", "pending")
    await w.r.hset(Q.tasks, "t1", "x")
    await w.r.lpush(Q.pending, "t1")
    verdict = await w.judge()
    assert any("t1" in v and "lost" in v for v in verdict.violations), verdict.violations


async def test_an_ack_counted_twice_is_caught(w: World) -> None:
    await w.completed("t1")
    await w.r.hincrby(Q.stats, "p", 1)
    await w.run("t1", T, T + 0.1)
    only(await w.judge(), "2 successful attempts counted, 1 tasks completed")


async def test_a_second_start_needs_a_fault_on_the_first_runner(w: World) -> None:
    await w.completed("t1", attempts=2)
    await w.enqueued("t1")
    await w.run("t1", T, None, pid=11)
    await w.run("t1", T + 8, T + 8.1, pid=12)
    only(await w.judge(), "started again")
    w.faults.append(Done("kill", 0, T + 1, T + 1, pids=[11]))
    verdict = await w.judge()
    assert verdict.ok, verdict.violations
    assert verdict.figures["runs again, by the fault that explains it"] == {"kill": 1}


async def test_a_fault_on_another_process_explains_nothing(w: World) -> None:
    await w.completed("t1", attempts=2)
    await w.run("t1", T, None, pid=11)
    await w.run("t1", T + 8, T + 8.1, pid=12)
    w.faults.append(Done("stop", 0, T + 1, T + 7, pids=[99]))
    only(await w.judge(), "started again")


async def test_more_runs_of_one_tenant_than_its_slots_is_an_overshoot(w: World) -> None:
    for i in range(TENANT_SLOTS + 1):
        await w.completed(f"t{i}", queue=QueueKeys("aq", "tenants"))
        await w.run(f"t{i}", T + i * 0.1, T + 1, pid=i, type_="soak:tenant", key="acme")
    only(await w.judge(), f"tenant acme: {TENANT_SLOTS + 1} runs at once")


async def test_a_run_stops_counting_at_the_kill_of_its_process(w: World) -> None:
    """The first run's process was killed at T+0.5 (its slot freed by the reaper): a
    third run from T+0.6 on is within the limit."""
    await w.run("t0", T, None, pid=1, type_="soak:tenant", key="acme")
    w.faults.append(Done("kill", 0, T + 0.5, T + 0.5, pids=[1]))
    for i in range(1, TENANT_SLOTS + 1):
        await w.completed(f"t{i}", queue=QueueKeys("aq", "tenants"))
        await w.run(f"t{i}", T + 0.6, T + 1, pid=10 + i, type_="soak:tenant", key="acme")
    verdict = await w.judge()
    assert verdict.ok, verdict.violations


async def test_more_starts_than_the_rate_in_one_window_is_an_overshoot(w: World) -> None:
    n = RATE.limit + 1
    for i in range(n):
        await w.completed(f"t{i}", queue=QueueKeys("aq", "rated"))
        await w.run(f"t{i}", T + i * 0.01, T + 0.5, pid=i, type_="soak:rated")
    only(await w.judge(), f"rate: {n} starts")


async def test_a_flow_step_that_starts_before_its_dependency_finished_is_caught(
    w: World,
) -> None:
    fq = QueueKeys("aq", "flows")
    await w.r.hset("aq:{f:F}:meta", "state", "completed")
    await w.r.zadd("aq:flows", {"F": 1})
    await w.enqueued("F", queue="flows", kind="flow", key="F", deps={"a": [], "b": ["a"]})
    await w.completed("sa", queue=fq)
    await w.completed("sb", queue=fq)
    await w.run("sb", T, T + 0.1, key="F/b", type_="soak:step", inputs=["a"])
    await w.run("sa", T + 1, T + 1.1, key="F/a", type_="soak:step")
    only(await w.judge(), "step b started before a finished")


async def test_a_flow_step_given_the_wrong_inputs_is_caught(w: World) -> None:
    fq = QueueKeys("aq", "flows")
    await w.r.hset("aq:{f:F}:meta", "state", "completed")
    await w.r.zadd("aq:flows", {"F": 1})
    await w.enqueued("F", queue="flows", kind="flow", key="F", deps={"a": [], "b": ["a"]})
    await w.completed("sa", queue=fq)
    await w.completed("sb", queue=fq)
    await w.run("sa", T, T + 0.1, key="F/a", type_="soak:step")
    await w.run("sb", T + 1, T + 1.1, key="F/b", type_="soak:step", inputs=["b"])
    only(await w.judge(), "step b got inputs ['b'], expected ['a']")


@pytest.mark.parametrize(
    ("key", "kind", "fragment"),
    [
        ("aq:{default}:l:soak-1", "list", "lease list"),
        ("aq:{default}:hold", "hash", "entries left in hold"),
        ("aq:{default}:uniq", "hash", "entries left in uniq"),
        ("aq:{default}:pending", "list", "entries left in pending"),
        ("aq:{f:GONE}:outbox", "list", "orphan key aq:{f:GONE}:outbox"),
        ("aq:something-else", "list", "orphan key aq:something-else"),
    ],
)
async def test_what_is_left_behind_is_named(w: World, key: str, kind: str, fragment: str) -> None:
    if kind == "list":
        await w.r.rpush(key, "x")
    else:
        await w.r.hset(key, "x", "1")
    verdict = await w.judge()
    assert any(fragment in v for v in verdict.violations), verdict.violations


async def test_a_key_of_an_unknown_family_that_expires_is_no_orphan(w: World) -> None:
    await w.r.set("aq:something-else", "1", ex=60)
    verdict = await w.judge()
    assert verdict.ok, verdict.violations


async def test_a_cron_tick_enqueued_twice_is_caught(w: World) -> None:
    await w.completed("c1")
    await w.completed("c2")
    await w.r.lpush(Q.cronlog, "soak:cron|2000|c1", "soak:cron|2000|c2")
    only(await w.judge(), "cron tick 2000 enqueued 2 times")


def test_records_use_their_own_keys() -> None:
    assert not any(k.startswith("aq:") for k in (EVENTS, SEQ, ENQUEUED))


async def test_a_fault_on_a_slots_path_explains_a_rerun_of_any_process_run_there(
    w: World,
) -> None:
    """A worker restarted in a slot while its path was stalled was never signalled:
    the stall still hit it (the oracle knows which slot ran each pid)."""
    await w.completed("t1", attempts=2)
    await w.run("t1", T, None, pid=21)
    await w.run("t1", T + 8, T + 8.1, pid=12)
    w.faults.append(Done("stall", 3, T - 1, T + 6, pids=[20]))
    only(await Oracle(w.r, w.r, w.faults).judge(), "started again")
    verdict = await Oracle(w.r, w.r, w.faults, pid_slot={21: 3}).judge()
    assert verdict.ok, verdict.violations


async def test_a_lease_lapses_up_to_lease_ttl_after_a_server_outage(w: World) -> None:
    """Renewals failed during the outage: the lease may lapse after the server is back,
    and the task run again then."""
    await w.completed("t1", attempts=2)
    await w.run("t1", T + 5, None, pid=11)
    await w.run("t1", T + 6, T + 6.1, pid=12)
    w.faults.append(Done("server", 0, T, T + 3))
    assert (await Oracle(w.r, w.r, w.faults, lease_ttl=6).judge()).ok
    only(await Oracle(w.r, w.r, w.faults, lease_ttl=1).judge(), "started again")
