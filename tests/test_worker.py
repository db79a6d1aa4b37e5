"""The worker: running handlers, concurrency, queue weights, retries and outcomes."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import pytest

import aqueue
from aqueue import Context, Job, Mux, Worker
from aqueue._worker.claims import SPREAD
from aqueue._worker.runner import default_retry_delay
from aqueue.testing import drain

from .helpers import Peek, wait_for

pytestmark = pytest.mark.anyio


def no_delay(retry_count: int, error: BaseException, task: aqueue.TaskInfo) -> float:
    return 0.0


QUICK: dict[str, Any] = {"retry_delay": no_delay}


class Order(msgspec.Struct):
    id: int
    items: list[str]


@pytest.fixture
async def peek(url: str) -> AsyncIterator[Peek]:
    p = Peek(url)
    yield p
    await p.close()


async def test_handlers_get_typed_payloads(url: str) -> None:
    mux = Mux()
    seen: dict[str, Any] = {}

    @mux.task("order")
    async def order(ctx: Context, o: Order) -> None:
        seen["order"] = o

    @mux.task("dict")
    async def as_dict(ctx: Context, d: dict[str, int]) -> None:
        seen["dict"] = d

    @mux.task("raw")
    async def raw(ctx: Context, data: bytes) -> None:
        seen["raw"] = data

    @mux.task("none")
    async def nothing(ctx: Context) -> None:
        seen["none"] = ctx.task_type

    @mux.task("thread")
    def in_thread(ctx: Context, n: int) -> None:
        seen["thread"] = (n, threading.current_thread() is threading.main_thread())

    async with aqueue.Client(url) as client:
        await client.enqueue(order, Order(id=7, items=["a", "b"]))
        await client.enqueue(as_dict, {"x": 1})
        await client.enqueue(raw, b"\x00\xffraw")
        await client.enqueue(nothing)
        await client.enqueue(in_thread, 5)
    await drain(mux, url)
    assert seen == {
        "order": Order(id=7, items=["a", "b"]),
        "dict": {"x": 1},
        "raw": b"\x00\xffraw",
        "none": "none",
        "thread": (5, False),
    }


async def test_context_describes_the_attempt(url: str) -> None:
    mux = Mux()
    got: list[Context] = []

    @mux.task("ctx", max_retry=4, timeout=60)
    async def handler(ctx: Context) -> None:
        got.append(ctx)

    async with aqueue.Client(url) as client:
        info = await client.enqueue(handler, headers={"trace": "t1"})
    before = time.time()
    await drain(mux, url)
    (ctx,) = got
    assert (ctx.task_id, ctx.task_type, ctx.queue) == (info.id, "ctx", "default")
    assert (ctx.retry_count, ctx.max_retry, ctx.headers) == (0, 4, {"trace": "t1"})
    assert ctx.deadline is not None and 55 < ctx.deadline.timestamp() - before < 61
    assert ctx.enqueued_at is not None and ctx.enqueued_at.tzinfo is not None


async def test_idle_worker_picks_up_a_new_task_within_milliseconds(url: str) -> None:
    mux = Mux()
    started: list[float] = []

    @mux.task("ping")
    async def ping(ctx: Context, sent: float) -> None:
        started.append(time.perf_counter() - sent)

    async with Worker(mux, url), aqueue.Client(url) as client:
        await client.enqueue(ping, time.perf_counter())  # warm up connections
        await wait_for(lambda: len(started) == 1)
        for i in range(20):
            await anyio.sleep(0.02)  # the worker is idle, blocked on the bell
            await client.enqueue(ping, time.perf_counter())
            await wait_for(lambda i=i: len(started) == i + 2)  # type: ignore[misc]
    latencies = sorted(started[1:])
    median = latencies[len(latencies) // 2]
    print(f"idle-to-pickup: median {median * 1000:.2f} ms, max {latencies[-1] * 1000:.2f} ms")
    # Generous: correctness (no polling interval), not speed. Polling at 1 s would fail.
    assert median < 0.1


async def test_concurrency_limit_is_never_exceeded(url: str) -> None:
    mux = Mux()
    running = peak = done = 0

    @mux.task("slow")
    async def slow(ctx: Context) -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.02)
        running -= 1
        done += 1

    async with aqueue.Client(url) as client:
        await client.enqueue_many([Job(slow) for _ in range(40)])
    await drain(mux, url, concurrency=3)
    assert done == 40
    assert peak == 3


async def test_weighted_queues_share_claims_by_weight(url: str) -> None:
    mux = Mux()
    order: list[str] = []

    @mux.task("w")
    async def w(ctx: Context) -> None:
        order.append(ctx.queue)

    async with aqueue.Client(url) as client:
        await client.enqueue_many([Job(w, queue="heavy") for _ in range(600)])
        await client.enqueue_many([Job(w, queue="light") for _ in range(600)])
    worker = Worker(mux, url, concurrency=4, queues={"heavy": 3, "light": 1}, batch_size=4)
    async with worker:
        await wait_for(lambda: len(order) >= 400)
    first = order[:400]
    ratio = first.count("heavy") / max(1, first.count("light"))
    assert 2.0 < ratio < 4.5, ratio


async def test_weights_hold_among_more_queues_than_one_batch_is_split_across(
    url: str,
) -> None:
    """Past SPREAD queues with tasks, a batch goes to a few queues at a time (stride
    scheduling): over time each queue is still served by its weight."""
    mux = Mux()
    order: list[str] = []

    @mux.task("m")
    async def m(ctx: Context) -> None:
        order.append(ctx.queue)

    weights = {f"m{i}": (4 if i < 2 else 1) for i in range(20)}
    assert len(weights) > SPREAD
    async with aqueue.Client(url) as client:
        for q in weights:
            await client.enqueue_many([Job(m, queue=q) for _ in range(150)])
    worker = Worker(mux, url, concurrency=8, queues=weights, batch_size=8)
    async with worker:
        await wait_for(lambda: len(order) >= 1040)
    first = Counter(order[:1040])  # 40 per unit of weight, before any queue runs dry
    heavy = (first["m0"] + first["m1"]) / 2
    light = sum(first[q] for q in weights if weights[q] == 1) / 18
    assert 2.5 < heavy / light < 6.0, (heavy, light)
    assert all(first[q] > 0 for q in weights)  # nobody starved


async def test_strict_priority_drains_the_heaviest_queue_first(url: str) -> None:
    mux = Mux()
    order: list[str] = []

    @mux.task("s")
    async def s(ctx: Context) -> None:
        order.append(ctx.queue)

    async with aqueue.Client(url) as client:
        await client.enqueue_many([Job(s, queue="low") for _ in range(30)])
        await client.enqueue_many([Job(s, queue="high") for _ in range(30)])
    await drain(mux, url, queues={"high": 2, "low": 1}, strict_priority=True, concurrency=1)
    assert order == ["high"] * 30 + ["low"] * 30


async def test_failed_task_is_retried_then_succeeds(url: str, peek: Peek) -> None:
    mux = Mux()
    attempts: list[int] = []

    @mux.task("flaky", retention=60)
    async def flaky(ctx: Context) -> str:
        attempts.append(ctx.retry_count)
        if ctx.retry_count < 2:
            raise RuntimeError(f"boom {ctx.retry_count}")
        return "done"

    async with aqueue.Client(url) as client:
        info = await client.enqueue(flaky)
    await drain(mux, url, **QUICK)
    assert attempts == [0, 1, 2]
    assert await peek.state(info.id) == "completed"
    assert await peek.retried(info.id) == 2
    assert await peek.error(info.id) == "RuntimeError: boom 1"
    stats = await peek.stats()
    assert (stats["p"], stats["f"]) == ("3", "2")


async def test_task_is_archived_with_its_last_error_after_max_retry(url: str, peek: Peek) -> None:
    mux = Mux()
    runs = 0

    @mux.task("doomed", max_retry=2)
    async def doomed(ctx: Context) -> None:
        nonlocal runs
        runs += 1
        raise ValueError(f"bad input on run {runs}")

    async with aqueue.Client(url) as client:
        info = await client.enqueue(doomed)
    await drain(mux, url, **QUICK)
    assert runs == 3  # max_retry=2 means at most 3 runs
    assert await peek.state(info.id) == "archived"
    assert await peek.error(info.id) == "ValueError: bad input on run 3"
    failed_at = await peek.r.hget(peek.k + "failed_at", info.id)
    assert failed_at is not None
    assert abs(int(failed_at) / 1000 - time.time()) < 30


async def test_control_exceptions(url: str, peek: Peek) -> None:
    mux = Mux()
    runs: dict[str, int] = {}

    def count(ctx: Context) -> int:
        runs[ctx.task_type] = runs.get(ctx.task_type, 0) + 1
        return runs[ctx.task_type]

    @mux.task("skip")
    async def skip(ctx: Context) -> None:
        count(ctx)
        raise aqueue.SkipRetry("no point retrying")

    @mux.task("revoke")
    async def revoke(ctx: Context) -> None:
        count(ctx)
        raise aqueue.Revoke()

    @mux.task("again", max_retry=1)
    async def again(ctx: Context) -> None:
        if count(ctx) == 1:
            raise aqueue.Retry(0.05)

    @mux.task("spent", max_retry=0)
    async def spent(ctx: Context) -> None:
        count(ctx)
        raise aqueue.Retry(0.05)

    async with aqueue.Client(url) as client:
        s = await client.enqueue(skip)
        r = await client.enqueue(revoke)
        a = await client.enqueue(again)
        sp = await client.enqueue(spent)
    await drain(mux, url)
    assert runs == {"skip": 1, "revoke": 1, "again": 2, "spent": 1}
    assert await peek.state(s.id) == "archived"
    assert await peek.error(s.id) == "SkipRetry: no point retrying"
    assert await peek.state(r.id) is None  # dropped, not archived
    assert await peek.state(a.id) is None  # retried once, then succeeded
    # Retry counts as a retry: with none left, the task is archived.
    assert await peek.state(sp.id) == "archived"
    assert await peek.error(sp.id) == "Retry: retry requested in 0.05 s"


async def test_is_failure_false_retries_without_spending_retries(url: str, peek: Peek) -> None:
    mux = Mux()
    runs = 0
    errors: list[tuple[str, str]] = []

    class Busy(Exception):
        pass

    @mux.task("rate_limited", max_retry=0)
    async def limited(ctx: Context) -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise Busy("try later")

    def on_error(ctx: Context, exc: BaseException) -> None:
        errors.append((ctx.task_id, repr(exc)))

    async with aqueue.Client(url) as client:
        info = await client.enqueue(limited)
    await drain(mux, url, is_failure=lambda e: not isinstance(e, Busy), on_error=on_error, **QUICK)
    assert runs == 3
    assert errors == [(info.id, "Busy('try later')")] * 2
    assert "f" not in await peek.stats()  # not counted as failures


async def test_timeout_cancels_the_handler_and_follows_the_retry_policy(
    url: str, peek: Peek
) -> None:
    mux = Mux()
    cancelled = anyio.Event()

    @mux.task("stuck", timeout=0.2, max_retry=0)
    async def stuck(ctx: Context) -> None:
        try:
            await anyio.sleep(30)
        finally:
            cancelled.set()

    async with aqueue.Client(url) as client:
        info = await client.enqueue(stuck)
    started = time.monotonic()
    await drain(mux, url, timeout=10)
    assert cancelled.is_set()
    assert time.monotonic() - started < 5
    assert await peek.state(info.id) == "archived"
    assert await peek.error(info.id) == "TimeoutError: task timed out after 0.2 s"


async def test_middleware_wraps_handlers_outermost_first(url: str) -> None:
    mux = Mux()
    trail: list[str] = []

    async def first(ctx: Context, call_next: Any) -> Any:
        trail.append("first>")
        result = await call_next()
        trail.append("<first")
        return result

    async def second(ctx: Context, call_next: Any) -> Any:
        trail.append("second>")
        result = await call_next()
        trail.append("<second")
        return result

    mux.use(first)
    mux.use(second)

    @mux.task("m")
    async def m(ctx: Context) -> None:
        trail.append("handler")

    async with aqueue.Client(url) as client:
        await client.enqueue(m)
    await drain(mux, url)
    assert trail == ["first>", "second>", "handler", "<second", "<first"]


async def test_shutdown_returns_unfinished_tasks_to_the_head_without_an_attempt(
    url: str, peek: Peek
) -> None:
    mux = Mux()
    started = anyio.Event()

    @mux.task("long")
    async def long(ctx: Context) -> None:
        started.set()
        await anyio.sleep(30)

    @mux.task("later")
    async def later(ctx: Context) -> None: ...

    async with aqueue.Client(url) as client:
        info = await client.enqueue(long)
        behind = await client.enqueue(later)
    async with Worker(mux, url, concurrency=1, shutdown_timeout=0.1):
        with anyio.fail_after(10):
            await started.wait()
    assert await peek.pending() == [info.id, behind.id]  # back at the head
    assert await peek.state(info.id) == "pending"
    assert await peek.retried(info.id) == 0
    lease_keys = await peek.r.keys(peek.k + "l:*")
    assert lease_keys == []


async def test_shutdown_lets_handlers_finish_within_shutdown_timeout(url: str, peek: Peek) -> None:
    mux = Mux()
    started = anyio.Event()
    finished: list[str] = []

    @mux.task("short")
    async def short(ctx: Context) -> None:
        started.set()
        await anyio.sleep(0.2)
        finished.append(ctx.task_id)

    async with aqueue.Client(url) as client:
        info = await client.enqueue(short)
    async with Worker(mux, url, shutdown_timeout=5):
        with anyio.fail_after(10):
            await started.wait()
    assert finished == [info.id]
    assert await peek.state(info.id) is None  # acked and deleted (retention 0)


async def test_delayed_task_does_not_run_before_its_time(url: str) -> None:
    mux = Mux()
    ran_at: list[float] = []

    @mux.task("later")
    async def later(ctx: Context) -> None:
        ran_at.append(time.time())

    async with Worker(mux, url), aqueue.Client(url) as client:
        info = await client.enqueue(later, process_in=0.5)
        assert info.state == "scheduled"
        assert info.next_process_at is not None
        due = info.next_process_at.timestamp()
        await wait_for(lambda: bool(ran_at))
    assert ran_at[0] >= due
    assert ran_at[0] - due < 1.5  # generous: the forwarder must not be seconds late


async def test_unknown_task_type_is_retried_not_archived(url: str, peek: Peek) -> None:
    async with aqueue.Client(url) as client:
        info = await client.enqueue("from:the:future")
    async with Worker(Mux(), url):
        await wait_for(lambda: _is(peek, info.id, "retry"))
    err = await peek.error(info.id)
    assert err is not None and "'from:the:future'" in err


async def _is(peek: Peek, task_id: str, state: str) -> bool:
    return await peek.state(task_id) == state


def test_default_retry_delay_follows_the_documented_formula() -> None:
    info = aqueue.TaskInfo(id="x", queue="q", type="t")
    for n in range(6):
        for _ in range(20):
            d = default_retry_delay(n, RuntimeError(), info)
            assert n**4 + 15 <= d <= n**4 + 15 + 30 * (n + 1)


async def test_cancelling_run_returns_running_tasks_without_counting_an_attempt(
    url: str, peek: Peek
) -> None:
    mux = Mux()
    started = anyio.Event()

    @mux.task("long")
    async def long(ctx: Context) -> None:
        started.set()
        await anyio.sleep(30)

    async with aqueue.Client(url) as client:
        info = await client.enqueue(long)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(Worker(mux, url, shutdown_timeout=30).run)
            await started.wait()
            tg.cancel_scope.cancel()
    assert await peek.state(info.id) == "pending"
    assert await peek.pending() == [info.id]
    assert await peek.retried(info.id) == 0
    assert await peek.r.keys(peek.k + "l:*") == []


async def test_a_worker_audits_its_own_lease_and_returns_ids_it_does_not_hold(
    url: str, peek: Peek
) -> None:
    mux = Mux()
    ran: list[str] = []

    @mux.task("t")
    async def t(ctx: Context) -> None:
        ran.append(ctx.task_id)

    async with aqueue.Client(url) as client:
        info = await client.enqueue(t)
    worker = Worker(mux, url, lease_ttl=0.6)
    # Simulate a lost write: the task sits active in the worker's live lease list, but
    # the worker never heard of it (its claim reply, or its ack, was lost in a failover).
    lease = peek.k + f"l:{worker.id}"
    await peek.r.lmove(peek.k + "pending", lease, "RIGHT", "LEFT")
    await peek.r.hset(peek.k + "states", info.id, f"@{worker.id}.999")
    async with worker:
        await wait_for(lambda: bool(ran), timeout=10)
    assert ran == [info.id]
