"""Workers that die, freeze or stop, end to end (docs/guarantees.md: "Crash recovery",
"Fencing", "Graceful shutdown").

Every worker is a real ``aqueue worker tests.chaos.worker_app:worker`` subprocess on a
real Valkey server. Its handlers record each start and finish in that server, so the
test can tell what ran where, and how often, after the worker is gone. Run with
``pytest -s`` to see the measured recovery times.
"""

from __future__ import annotations

import signal
import time

import anyio
import pytest

import aqueue

from .crash_fixtures import (  # noqa: F401 -- fixtures, found by pytest by their names
    START_TIMEOUT,
    Store,
    Workers,
    store_fixture,
    until,
    workers_fixture,
)
from .worker_app import Work, suicide, work

pytestmark = pytest.mark.anyio

# Kept for a while after completion, so the test can read the result, the retry count
# and the last error of completed tasks.
RETENTION = 600


def reaper_pass(lease_ttl: float) -> float:
    """The longest time between two reaper passes of one worker (SPEC: min(ttl, 5))."""
    return min(lease_ttl, 5.0)


async def wait_states(store: Store, ids: set[str], state: str, timeout: float) -> None:
    """Wait until every task of ``ids`` is in ``state``."""
    try:
        with anyio.fail_after(timeout):
            while True:
                states = await store.states()
                if all(states.get(i) == state for i in ids):
                    return
                await anyio.sleep(0.02)
    except TimeoutError:
        states = await store.states()
        wrong = {i: states.get(i) for i in ids if states.get(i) != state}
        pytest.fail(f"{len(wrong)} task(s) not {state} after {timeout} s: {wrong}")


async def wait_started(store: Store, n: int, pid: int, timeout: float = START_TIMEOUT) -> None:
    """Wait until the worker ``pid`` has started ``n`` handlers."""

    async def started() -> bool:
        return sum(e.kind == "start" and e.pid == pid for e in await store.events()) >= n

    await until(started, timeout, f"{n} handler(s) started in worker {pid}")


# -- 1. SIGKILL with tasks in flight ---------------------------------------------------


@pytest.mark.parametrize(
    "kill_after",
    [
        # A runs 60 at once: killed during the first 60, 40 never started.
        50,
        # Killed once all 100 started: the first 60 are done (acked, or finished with
        # the ack not yet written), the last 40 in flight.
        100,
    ],
    ids=["first-batch-in-flight", "last-batch-in-flight"],
)
async def test_sigkilled_workers_tasks_finish_exactly_once_after_the_kill(
    aqueue_url: str, workers: Workers, store: Store, kill_after: int
) -> None:
    """100 two-second tasks, worker SIGKILLed with 40+ in flight, a new worker started:
    every task finishes, each exactly once after the kill."""
    ttl = 3.0
    async with aqueue.Client(aqueue_url) as client:
        infos = await client.enqueue_many(
            [aqueue.Job(work, Work(seconds=2.0), retention=RETENTION) for _ in range(100)]
        )
    ids = {i.id for i in infos}
    a = workers.start(concurrency=60, lease_ttl=ttl)
    await wait_started(store, kill_after, a.pid)

    killed_at = time.time()
    a.signal(signal.SIGKILL)
    assert await a.exit_code() == -signal.SIGKILL
    # A is gone: from here on nothing of A's can land. What it had finished and what it
    # held (state "@<token>") at this point decides what must run again.
    done_at_kill = await store.done()
    states_at_kill = await store.states()
    held = {i for i in ids if states_at_kill[i].startswith("@")}
    acked = {i for i in ids if states_at_kill[i] == "completed"}
    assert len(held) >= 40, f"only {len(held)} task(s) in flight at the kill"

    b = workers.start(concurrency=100, lease_ttl=ttl)
    await wait_states(store, ids, "completed", timeout=ttl + reaper_pass(ttl) + 30)
    finished_at = time.time()

    # Every task completed at least once; after the kill, exactly once each, except
    # that one acked before the kill never runs again. (A handler that finished but
    # whose ack was not written is re-run: that is at-least-once, and is counted.)
    done = await store.done()
    for i in ids:
        assert done.get(i, 0) >= 1, f"task {i} never completed"
        ran_after_kill = done.get(i, 0) - done_at_kill.get(i, 0)
        assert ran_after_kill == (0 if i in acked else 1), (i, states_at_kill[i], ran_after_kill)

    # The held tasks came back as a failed attempt of a lost worker; the others did not.
    events = await store.events()
    retried, errors = await store.retried(), await store.errors()
    failed_at = await store.failed_at()
    for i in ids:
        if i in held:
            assert retried.get(i) == 1, i
            assert errors[i].startswith("worker lost"), errors[i]
        else:
            assert retried.get(i, 0) == 0, i
            assert i not in errors, errors[i]
    restarts = {e.id: e for e in reversed(events) if e.kind == "start" and e.pid == b.pid}
    assert all(restarts[i].retry == 1 for i in held)
    assert {e.pid for e in events} == {a.pid, b.pid}
    stats = await store.stats()
    assert stats == {"p": len(ids) + len(held), "f": len(held)}
    assert "recovered" in b.stderr()

    bound = ttl + reaper_pass(ttl)
    back_pending = max(failed_at[i] for i in held) / 1000 - killed_at
    back_running = max(restarts[i].t for i in held) - killed_at
    rerun = sum(1 for i in held if done_at_kill.get(i))
    print(
        f"\n[chaos] SIGKILL with {len(held)} task(s) in flight ({len(acked)} acked before, "
        f"{rerun} finished but not acked), lease_ttl={ttl:g} s "
        f"(bound lease_ttl + reaper pass = {bound:g} s): back in pending after "
        f"{back_pending:.2f} s, all running again after {back_running:.2f} s, all "
        f"{len(ids)} completed {finished_at - killed_at:.2f} s after the kill"
    )
    # The margin covers B's start-up, the reaper's jitter and a busy machine.
    assert back_pending <= bound + 3.0
    assert back_running <= bound + 4.0


# -- 2. SIGSTOP past the lease: fencing ------------------------------------------------


@pytest.mark.parametrize(
    ("block", "sign"),
    [
        # The handler awaits when frozen: on waking, the heartbeat finds the lease expired
        # and cancels it before it can finish.
        (False, r"lease lost, handler cancelled"),
        # The handler blocks the event loop when frozen and returns on waking before
        # anything else in the worker runs: its ack is written, and refused.
        (True, r"late ack discarded"),
    ],
    ids=["handler-cancelled", "late-ack-refused"],
)
async def test_frozen_worker_loses_its_task_and_its_late_result_never_lands(
    aqueue_url: str, workers: Workers, store: Store, block: bool, sign: str
) -> None:
    """Worker frozen with SIGSTOP past its lease: the task completes on another worker;
    after SIGCONT the stale worker's result never lands."""
    ttl = 2.0
    a = await workers.start(concurrency=2, lease_ttl=ttl).ready()
    async with aqueue.Client(aqueue_url) as client:
        # Busy on its first run only: the re-run on B finishes at once.
        busy = Work(seconds=1.5 if block else 60.0, first_only=True, block=block)
        info = await client.enqueue(work, busy, retention=RETENTION)
        await wait_started(store, 1, a.pid)
        a.signal(signal.SIGSTOP)
        frozen_at = time.time()

        b = await workers.start(concurrency=2, lease_ttl=ttl).ready()
        await wait_states(store, {info.id}, "completed", timeout=ttl + reaper_pass(ttl) + 15)
        print(
            f"\n[chaos] SIGSTOP, lease_ttl={ttl:g} s: task completed on another worker "
            f"{time.time() - frozen_at:.2f} s after the freeze"
        )
        assert await store.result(info.id) == {"pid": b.pid}
        assert (await store.errors())[info.id].startswith("worker lost")
        b.signal(signal.SIGTERM)
        assert await b.exit_code() == 0

        a.signal(signal.SIGCONT)
        await a.wait_log(sign)
        # The stale worker changed nothing: B's result stays, and the server counts one
        # completion (p counts every finished attempt, f the failed one: the recovery).
        assert (await store.states())[info.id] == "completed"
        assert await store.result(info.id) == {"pid": b.pid}
        assert await store.stats() == {"p": 2, "f": 1}
        finishes = [e.pid for e in await store.events() if e.kind == "finish"]
        # Code already past its last await on waking may complete (docs/guarantees.md).
        assert finishes == ([b.pid, a.pid] if block else [b.pid])

        # A goes on working normally.
        again = await client.enqueue(work, Work(), retention=RETENTION)
        await wait_states(store, {again.id}, "completed", timeout=10)
        assert await store.result(again.id) == {"pid": a.pid}
        assert await store.stats() == {"p": 3, "f": 1}
    assert a.alive()


async def test_frozen_idle_worker_holds_back_no_task_another_worker_can_run(
    aqueue_url: str, workers: Workers, store: Store
) -> None:
    """An idle worker frozen while blocked on its queue's bell: a new task rings the bell
    (the frozen worker's blocking wait takes the token), but the task itself stays
    pending, so another worker runs it at once, long before any lease could lapse. When
    the frozen worker wakes and reads the late token, it finds nothing to run twice."""
    ttl = 30.0
    a = await workers.start(concurrency=1, lease_ttl=ttl).ready()

    async def a_is_blocked() -> bool:  # A waits on the empty queue's bell
        return await store.blocked_clients() > 0

    await until(a_is_blocked, 10, "worker A blocks on its queue")
    a.signal(signal.SIGSTOP)
    async with aqueue.Client(aqueue_url) as client:
        info = await client.enqueue(work, Work(), retention=RETENTION)
        assert [info.id] not in (await store.lease_lists()).values()
        started = time.monotonic()
        b = await workers.start(concurrency=1, lease_ttl=ttl).ready()
        await wait_states(store, {info.id}, "completed", timeout=15)
        # Not a reaper's doing: the task was never held by the frozen worker.
        assert time.monotonic() - started < ttl
        assert (await store.retried()).get(info.id, 0) == 0
        b.signal(signal.SIGTERM)
        assert await b.exit_code() == 0

        a.signal(signal.SIGCONT)
        # A handles the late token, then claims what comes next.
        again = await client.enqueue(work, Work(), retention=RETENTION)
        await wait_states(store, {again.id}, "completed", timeout=10)
        assert await store.result(again.id) == {"pid": a.pid}

    assert (await store.starts())[info.id] == 1
    assert (await store.states())[info.id] == "completed"
    assert await store.result(info.id) == {"pid": b.pid}
    assert info.id not in await store.pending()
    assert await store.stats() == {"p": 2}


# -- 3. A poison task that kills every worker running it -------------------------------


async def test_task_that_kills_its_worker_is_archived_after_max_retry_plus_one_runs(
    aqueue_url: str, workers: Workers, store: Store
) -> None:
    """A task that kills its own worker: archived after max_retry + 1 runs."""
    ttl = 1.0
    max_retry = 2
    async with aqueue.Client(aqueue_url) as client:
        info = await client.enqueue(suicide, max_retry=max_retry)
    current = workers.start(concurrency=2, lease_ttl=ttl)
    began = time.monotonic()
    # Whenever the worker dies, start the next one: it reaps its predecessor's lease.
    with anyio.fail_after((max_retry + 2) * (ttl + reaper_pass(ttl) + START_TIMEOUT)):
        while (await store.states()).get(info.id) != "archived":
            if not current.alive():
                current = workers.start(concurrency=2, lease_ttl=ttl)
            await anyio.sleep(0.02)
    took = time.monotonic() - began

    dead, survivor = workers.started[:-1], workers.started[-1]
    assert [w.popen.returncode for w in dead] == [-signal.SIGKILL] * (max_retry + 1)
    assert survivor.alive()
    runs = [e for e in await store.events() if e.kind == "start"]
    assert [e.retry for e in runs] == list(range(max_retry + 1))
    assert [e.pid for e in runs] == [w.pid for w in dead]
    assert (await store.starts())[info.id] == max_retry + 1
    assert (await store.retried())[info.id] == max_retry + 1
    assert (await store.errors())[info.id].startswith("worker lost")
    assert await store.stats() == {"p": max_retry + 1, "f": max_retry + 1}
    assert info.id not in await store.pending()
    print(
        f"\n[chaos] poison task archived after {len(runs)} runs (max_retry={max_retry}), "
        f"lease_ttl={ttl:g} s, {took:.2f} s"
    )


# -- 4. SIGTERM: graceful shutdown returns unfinished tasks ----------------------------


async def test_sigterm_returns_unfinished_tasks_without_an_attempt_for_another_worker(
    aqueue_url: str, workers: Workers, store: Store
) -> None:
    """A graceful SIGTERM with tasks in flight and a short shutdown timeout: the
    unfinished tasks go back to the head of the queue, as pending, with no attempt
    counted; a second worker finishes all of them."""
    a = await workers.start(concurrency=20, shutdown_timeout=0.5).ready()
    async with aqueue.Client(aqueue_url) as client:
        # A claims the first 20 (its concurrency): busy on their first run only. The
        # last 5 wait behind them, and take no time.
        busy, quick = Work(seconds=60.0, first_only=True), Work()
        infos = await client.enqueue_many(
            [aqueue.Job(work, busy if n < 20 else quick, retention=RETENTION) for n in range(25)]
        )
    ids = [i.id for i in infos]
    held, waiting = ids[:20], ids[20:]
    await wait_started(store, 20, a.pid)

    a.signal(signal.SIGTERM)
    assert await a.exit_code() == 0
    assert "returned 20 unfinished task(s)" in a.stderr()
    pending = await store.pending()
    assert set(pending[:20]) == set(held)
    assert pending[20:] == waiting
    assert set((await store.states()).values()) == {"pending"}
    assert await store.retried() == {}
    assert await store.errors() == {}
    assert await store.stats() == {}

    b = workers.start(concurrency=20)
    await wait_states(store, set(ids), "completed", timeout=START_TIMEOUT + 10)
    assert await store.done() == dict.fromkeys(ids, 1)
    runs = [e for e in await store.events() if e.kind == "start" and e.pid == b.pid]
    assert sorted(e.id for e in runs) == sorted(ids)
    assert {e.retry for e in runs} == {0}
    assert await store.retried() == {}
    assert await store.stats() == {"p": 25}
