"""Claims at the edges of a lease.

The lease audit never returns a task its worker is about to run.

A worker claims through its ack writer too (the claims ride in the acks' round trip:
when it is busy, or when a limit holds tasks back and the acks may free its slots).
The audit, which gives back every id of the worker's lease list it does not hold, must
leave alone a queue with such a claim in flight: the ids the claim moved are not held
until its reply is read. The soak found the race (a task run twice, the second time
with no attempt counted and no fault to explain it); here the audit is asked for all
time a claim rides with the acks, so that the race would show within seconds.
"""

from __future__ import annotations

import time
from collections import Counter

import anyio
import anyio.lowlevel
import pytest

from aqueue import Client, Context, Inspector, Job, Mux, Worker
from aqueue._redis.scripts import Call

from .helpers import wait_for

pytestmark = pytest.mark.anyio

TASKS = 3000


async def test_the_audit_never_hands_back_a_task_claimed_with_the_acks(aqueue_url: str) -> None:
    runs: Counter[str] = Counter()
    mux = Mux()

    # A limited task type: the ack writer then claims with its acks whenever a slot is
    # free, while the dispatcher waits on the queue's bell and audits on every wake-up.
    @mux.task("audit:noop", concurrency_limit=4)
    async def noop(ctx: Context) -> None:
        runs[ctx.task_id] += 1
        await anyio.lowlevel.checkpoint()

    async with Client(aqueue_url) as client:
        infos = await client.enqueue_many([Job(noop) for _ in range(TASKS)])
        worker = Worker(mux, aqueue_url, concurrency=20)
        async with worker, Inspector(aqueue_url) as inspector:
            parts = worker._parts
            assert parts is not None
            dispatcher = parts.dispatcher
            plain = dispatcher.after_acks

            def after_acks(n: int) -> tuple[dict[str, int], list[Call]]:
                """As a heartbeat's audit mark landing while the claims are in flight."""
                plan, calls = plain(n)
                if calls:
                    dispatcher._audit.mark(plan)
                return plan, calls

            dispatcher.after_acks = after_acks  # type: ignore[method-assign]

            async def done() -> bool:
                q = await inspector.queue_info("default")
                # A task handed back is pending again, or running a second time.
                return len(runs) == TASKS and q.pending == 0 and q.active == 0

            await wait_for(done, 60)
    twice = {i: n for i, n in runs.items() if n > 1}
    assert not twice, f"{len(twice)} tasks ran twice, e.g. {list(twice.items())[:3]}"
    assert set(runs) == {i.id for i in infos}


async def test_a_worker_renews_a_lapsing_lease_before_it_claims(aqueue_url: str) -> None:
    """Its heartbeat missed its beats (a server outage): a claim made now would hold a
    task for the moments left before the lease lapses, then drop it to run again
    elsewhere. The soak saw that after every server restart; the claim renews first."""
    ran: list[str] = []
    mux = Mux()

    @mux.task("edge:noop")
    async def noop(ctx: Context) -> None:
        ran.append(ctx.task_id)

    worker = Worker(mux, aqueue_url, lease_ttl=30)  # the heartbeat renews every 10 s
    async with Client(aqueue_url) as client, worker:
        parts = worker._parts
        assert parts is not None
        await wait_for(lambda: parts.lease.valid_until < float("inf"), 10)
        parts.lease.valid_until = time.monotonic() + 1  # as if beats had been missed
        info = await client.enqueue(noop)
        await wait_for(lambda: ran == [info.id], 10)
        assert parts.lease.valid_until - time.monotonic() > 25
