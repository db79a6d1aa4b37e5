"""Flow control in one worker process (SPEC §6, docs/flow-control.md): priority within a
queue, concurrency and rate limits, per-key limits and fairness, on every server kind.
The same guarantees across worker processes: tests/test_flow_processes.py."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import pytest

import aqueue
from aqueue._codec import Body, decode_message
from aqueue._redis.keys import queue_keys

from .helpers import araw_client, wait_for

pytestmark = pytest.mark.anyio


class Job(msgspec.Struct):
    n: int
    tenant: str = ""
    hold: float = 0.0


class Gauge:
    """Counts the handlers running at once, overall and per tenant, and the order and
    monotonic time of their starts."""

    def __init__(self) -> None:
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.started: list[int] = []
        self.times: list[float] = []
        self.finished: list[int] = []

    async def run(self, job: Job, release: anyio.Event | None = None) -> None:
        self.started.append(job.n)
        self.times.append(time.monotonic())
        for name in ("*", job.tenant):
            self.running[name] = self.running.get(name, 0) + 1
            self.peak[name] = max(self.peak.get(name, 0), self.running[name])
        try:
            if release is not None:
                await release.wait()
            await anyio.sleep(job.hold)
        finally:
            for name in ("*", job.tenant):
                self.running[name] -= 1
            self.finished.append(job.n)


@pytest.fixture
async def client(url: str) -> AsyncIterator[aqueue.Client]:
    async with aqueue.Client(url) as c:
        yield c


async def _slots_in_use(url: str, queue: str = "default") -> dict[Any, Any]:
    r = araw_client(url)
    try:
        return dict(await r.hgetall(queue_keys("aq", queue).running))
    finally:
        await r.aclose()


async def test_higher_priority_runs_first_and_fifo_within_a_priority(
    url: str, client: aqueue.Client
) -> None:
    mux, gauge = aqueue.Mux(), Gauge()

    @mux.task("job")
    async def job(ctx: aqueue.Context, j: Job) -> None:
        await gauge.run(j)

    plan = [(0, 0), (1, 5), (2, 0), (3, 9), (4, 5), (5, 9), (6, 1)]
    for n, priority in plan:
        info = await client.enqueue(job, Job(n), priority=priority)
        assert info.priority == priority
    async with aqueue.Worker(mux, url, concurrency=1):
        await wait_for(lambda: len(gauge.finished) == len(plan))
    assert gauge.started == [3, 5, 1, 4, 6, 0, 2]


async def test_keys_are_served_in_turn_whatever_their_backlog(
    url: str, client: aqueue.Client
) -> None:
    mux, gauge = aqueue.Mux(), Gauge()

    @mux.task("job", limit_key=lambda j: j.tenant)
    async def job(ctx: aqueue.Context, j: Job) -> None:
        assert ctx.limit_key == j.tenant
        await gauge.run(j)

    await client.enqueue_many([aqueue.Job(job, Job(i, "big")) for i in range(40)])
    small = [await client.enqueue(job, Job(100 + i, "small")) for i in range(3)]
    plain = await client.enqueue("plain", None)
    assert small[0].limit_key == "small"

    @mux.task("plain")
    async def plain_task(ctx: aqueue.Context) -> None:
        gauge.started.append(-1)

    async with aqueue.Worker(mux, url, concurrency=1):
        await wait_for(lambda: len(gauge.finished) == 43)
    assert plain.limit_key is None
    # The small tenant (and the plain task, a lane of its own) waited one turn each,
    # not for the big tenant's backlog.
    first = gauge.started[:8]
    assert {100, 101, 102, -1} <= set(first), gauge.started


async def test_a_concurrency_limit_holds_back_only_its_own_tasks(
    url: str, client: aqueue.Client
) -> None:
    mux, gauge = aqueue.Mux(), Gauge()
    release = anyio.Event()

    @mux.task("slow", concurrency_limit=1)
    async def slow(ctx: aqueue.Context, j: Job) -> None:
        await gauge.run(j, release)

    @mux.task("quick")
    async def quick(ctx: aqueue.Context, j: Job) -> None:
        await gauge.run(j)

    held = [await client.enqueue(slow, Job(i)) for i in range(3)]
    await client.enqueue_many([aqueue.Job(quick, Job(10 + i)) for i in range(5)])
    async with aqueue.Worker(mux, url, concurrency=4):
        # Every quick task behind the held-back slow ones ran: no head-of-line blocking.
        await wait_for(lambda: len(gauge.finished) == 5)
        assert sorted(gauge.finished) == [10, 11, 12, 13, 14]
        assert gauge.peak["*"] <= 4 and gauge.running["*"] == 1
        # The held-back tasks wait pending, their attempts untouched.
        async with aqueue.Inspector(url) as inspector:
            waiting = [await inspector.get_task("default", i.id) for i in held]
        assert sorted(t.state for t in waiting) == ["active", "pending", "pending"]
        assert [t.retried for t in waiting] == [0, 0, 0]
        release.set()
        await wait_for(lambda: len(gauge.finished) == 8)
    assert gauge.peak.get("", 0) <= 4
    started_slow = [n for n in gauge.started if n < 10]
    assert started_slow == [0, 1, 2]
    assert await _slots_in_use(url) == {}


async def test_a_slot_is_freed_once_however_the_attempt_ends(
    url: str, client: aqueue.Client
) -> None:
    mux, gauge = aqueue.Mux(), Gauge()

    @mux.task("one", concurrency_limit=1, max_retry=1)
    async def one(ctx: aqueue.Context, how: str) -> None:
        await gauge.run(Job(len(gauge.started)))
        if how == "retry" and ctx.retry_count == 0:
            raise aqueue.Retry(0.05)
        if how == "fail":
            raise RuntimeError("boom")  # retried once, then archived
        if how == "skip":
            raise aqueue.SkipRetry("no")
        if how == "revoke":
            raise aqueue.Revoke()
        if how == "timeout":
            await anyio.sleep(10)

    ways = ["ok", "retry", "fail", "skip", "revoke", "timeout", "ok"]
    for how in ways:
        await client.enqueue(one, how, timeout=0.2 if how == "timeout" else None)
    async with aqueue.Worker(mux, url, concurrency=3, retry_delay=lambda *_: 0.05):
        # retry and fail run twice, timeout twice (retried after its timeout, once).
        await wait_for(lambda: len(gauge.finished) == len(ways) + 3, timeout=20)
        assert gauge.peak["*"] == 1
    assert await _slots_in_use(url) == {}


async def test_cancelling_a_running_limited_task_frees_its_slot(
    url: str, client: aqueue.Client
) -> None:
    mux, gauge = aqueue.Mux(), Gauge()

    @mux.task("one", concurrency_limit=1)
    async def one(ctx: aqueue.Context, j: Job) -> None:
        await gauge.run(j, anyio.Event())  # never released: only a cancel ends it

    first = await client.enqueue(one, Job(0))
    await client.enqueue(one, Job(1))
    async with aqueue.Worker(mux, url, concurrency=2):
        await wait_for(lambda: gauge.started == [0])
        async with aqueue.Inspector(url) as inspector:
            await inspector.cancel("default", first.id)
        await wait_for(lambda: gauge.started == [0, 1])
    assert await _slots_in_use(url) == {}


async def test_per_key_concurrency_holds_for_each_key_separately(
    url: str, client: aqueue.Client
) -> None:
    mux, gauge = aqueue.Mux(), Gauge()

    @mux.task("job", concurrency_limit=1, limit_key=lambda j: j.tenant)
    async def job(ctx: aqueue.Context, j: Job) -> None:
        await gauge.run(j)

    jobs = [aqueue.Job(job, Job(i, tenant, hold=0.05)) for i in range(4) for tenant in "abc"]
    await client.enqueue_many(jobs)
    async with aqueue.Worker(mux, url, concurrency=6):
        await wait_for(lambda: len(gauge.finished) == 12)
    assert gauge.peak["a"] == gauge.peak["b"] == gauge.peak["c"] == 1
    assert gauge.peak["*"] >= 2  # different keys ran side by side


async def test_a_queue_limit_caps_every_task_of_the_queue(url: str, client: aqueue.Client) -> None:
    mux, gauge = aqueue.Mux(), Gauge()
    mux.limit_queue("bulk", concurrency_limit=2)

    @mux.task("job", queue="bulk")
    async def job(ctx: aqueue.Context, j: Job) -> None:
        await gauge.run(j)

    await client.enqueue_many([aqueue.Job(job, Job(i, hold=0.05)) for i in range(8)])
    async with aqueue.Worker(mux, url, concurrency=6, queues={"bulk": 1}):
        await wait_for(lambda: len(gauge.finished) == 8)
    assert gauge.peak["*"] == 2
    assert await _slots_in_use(url, "bulk") == {}


async def test_limits_declared_after_the_tasks_were_enqueued_still_hold(
    url: str, client: aqueue.Client
) -> None:
    # Enqueued by name before any worker declared the limit: plain tasks of priority 0.
    await client.enqueue_many([aqueue.Job("job", {"n": i, "hold": 0.05}) for i in range(6)])
    mux, gauge = aqueue.Mux(), Gauge()

    @mux.task("job", concurrency_limit=1)
    async def job(ctx: aqueue.Context, j: Job) -> None:
        await gauge.run(j)

    async with aqueue.Worker(mux, url, concurrency=4):
        await wait_for(lambda: len(gauge.finished) == 6)
    assert gauge.peak["*"] == 1
    assert gauge.started == list(range(6))  # still oldest first


async def test_a_rate_limit_allows_at_most_limit_starts_in_any_window(
    url: str, client: aqueue.Client
) -> None:
    mux, gauge = aqueue.Mux(), Gauge()

    @mux.task("job", rate_limit="5/s")
    async def job(ctx: aqueue.Context, j: Job) -> None:
        await gauge.run(j)

    begun = time.monotonic()
    await client.enqueue_many([aqueue.Job(job, Job(i)) for i in range(12)])
    async with aqueue.Worker(mux, url, concurrency=10):
        await wait_for(lambda: len(gauge.finished) == 12, timeout=15)
    times = gauge.times
    # The windows are the server's; a start seen here lags its claim by a little.
    assert all(times[i + 5] - times[i] >= 0.95 for i in range(len(times) - 5)), times
    # 12 starts at 5/s: two full windows, then the last two; woken by the window, not a poll.
    assert 1.9 <= times[-1] - begun < 4.0


async def test_limits_are_visible_to_the_inspector(url: str, client: aqueue.Client) -> None:
    mux, gauge = aqueue.Mux(), Gauge()
    release = anyio.Event()
    mux.limit_queue("default", rate_limit=aqueue.Rate(100, per=60))

    @mux.task("job", concurrency_limit=2, limit_key=lambda j: j.tenant)
    async def job(ctx: aqueue.Context, j: Job) -> None:
        await gauge.run(j, release)

    await client.enqueue_many([aqueue.Job(job, Job(i, t)) for i in range(3) for t in "xy"])
    async with aqueue.Worker(mux, url, concurrency=10), aqueue.Inspector(url) as inspector:
        await wait_for(lambda: len(gauge.started) == 4)
        limits = {(x.queue, x.task_type): x for x in await inspector.limits()}
        release.set()
    queue_limit = limits[("default", None)]
    assert queue_limit.rate_limit == aqueue.Rate(100, per=60.0)
    assert queue_limit.concurrency_limit is None
    typed = limits[("default", "job")]
    assert typed.concurrency_limit == 2 and typed.rate_limit is None
    assert typed.running == 4
    assert typed.keys == 2


@pytest.mark.parametrize(
    "options",
    [{"priority": 10}, {"priority": -1}, {"priority": True}, {"limit_key": ""}, {"limit_key": 5}],
)
async def test_bad_flow_options_are_refused_and_write_nothing(
    url: str, client: aqueue.Client, options: dict[str, Any]
) -> None:
    with pytest.raises(aqueue.InvalidOption) as caught:
        await client.enqueue("job", None, **options)
    assert repr(next(iter(options.values()))) in str(caught.value)
    assert isinstance(caught.value, ValueError)
    async with aqueue.Inspector(url) as inspector:
        assert "default" not in await inspector.queues()


@pytest.mark.parametrize("bad", ["10/x", "0/s", "ten/s", 0])
def test_bad_limits_are_refused_at_registration(bad: Any) -> None:
    mux = aqueue.Mux()
    with pytest.raises(aqueue.InvalidOption, match=repr(bad)):
        mux.task("job", rate_limit=bad)(lambda ctx: None)
    with pytest.raises(aqueue.InvalidOption):
        mux.limit_queue("q", concurrency_limit=0)


async def test_a_miscounted_slot_is_counted_again_from_the_running_tasks(
    url: str, client: aqueue.Client, caplog: pytest.LogCaptureFixture
) -> None:
    # As if the server lost the write of a release: a slot counted as taken, none held.
    r = araw_client(url)
    try:
        await r.hset(queue_keys("aq", "default").running, mapping={"t\x02job\x02": 1})
    finally:
        await r.aclose()
    mux, gauge = aqueue.Mux(), Gauge()

    @mux.task("job", concurrency_limit=1)
    async def job(ctx: aqueue.Context, j: Job) -> None:
        await gauge.run(j)

    await client.enqueue(job, Job(0))
    async with aqueue.Worker(mux, url, lease_ttl=1):
        # The janitor runs after each reaper pass (every second here).
        await wait_for(lambda: gauge.finished == [0], timeout=10)
    assert "miscounted" in caplog.text
    assert await _slots_in_use(url) == {}


async def test_the_rate_windows_of_keys_gone_quiet_are_dropped(
    url: str, client: aqueue.Client
) -> None:
    mux, gauge = aqueue.Mux(), Gauge()

    @mux.task("job", rate_limit=aqueue.Rate(5, per=0.2), limit_key=lambda j: j.tenant)
    async def job(ctx: aqueue.Context, j: Job) -> None:
        await gauge.run(j)

    await client.enqueue_many([aqueue.Job(job, Job(i, f"k{i}")) for i in range(20)])
    k = queue_keys("aq", "default")
    r = araw_client(url)
    try:
        async with aqueue.Worker(mux, url, lease_ttl=1):
            await wait_for(lambda: len(gauge.finished) == 20)
            assert await r.zcard(k.rlog) > 0

            async def dropped() -> bool:
                return await r.zcard(k.rlog) == 0 and await r.zcard(k.rlim) == 0

            await wait_for(dropped, timeout=10)
    finally:
        await r.aclose()


async def test_a_task_stored_before_flow_control_still_runs(url: str) -> None:
    """A message in the format of earlier versions ("<max_retry>|<digest>|<body>"), left
    in a queue across an upgrade, is read, run and acked."""
    mux, gauge = aqueue.Mux(), Gauge()

    @mux.task("job", concurrency_limit=1)
    async def job(ctx: aqueue.Context, j: Job) -> None:
        await gauge.run(j)

    body = Body("job", msgspec.Raw(msgspec.msgpack.encode({"n": 7})), 0.0, 0, 0.0, 1)
    old = b"3||" + msgspec.msgpack.encode(body)
    k = queue_keys("aq", "default")
    r = araw_client(url)
    try:
        await r.hset(k.tasks, "old", old)
        await r.hset(k.states, "old", "pending")
        await r.lpush(k.pending, "old")
        await r.sadd("aq:queues", "default")
        header, decoded = decode_message(old)
        assert (header.max_retry, header.priority, header.limit_key) == (3, 0, "")
        assert decoded.type == "job"
        async with aqueue.Worker(mux, url):
            await wait_for(lambda: gauge.finished == [7])
        assert await r.hget(k.states, "old") is None
    finally:
        await r.aclose()


async def test_queue_weights_choose_the_queue_before_priority_orders_it(
    url: str, client: aqueue.Client
) -> None:
    mux, gauge = aqueue.Mux(), Gauge()

    @mux.task("job")
    async def job(ctx: aqueue.Context, j: Job) -> None:
        await gauge.run(j)

    await client.enqueue(job, Job(1), queue="low", priority=9)
    await client.enqueue(job, Job(2), queue="high", priority=0)
    await client.enqueue(job, Job(3), queue="high", priority=5)
    queues = {"high": 10, "low": 1}
    async with aqueue.Worker(mux, url, concurrency=1, queues=queues, strict_priority=True):
        await wait_for(lambda: len(gauge.finished) == 3)
    # Strict priority serves the heavy queue first; within it, priority 5 before 0; the
    # light queue's priority 9 never jumps ahead of another queue.
    assert gauge.started == [3, 2, 1]
