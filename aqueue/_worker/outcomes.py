"""Running claimed tasks and writing their outcomes.

One long-lived runner per slot takes claimed tasks as they come. Successful attempts
are acked in batches by one writer coroutine, which also claims the next tasks in the
same round trip; a slot is freed only once its ack is written, so the worker never
holds more claimed tasks than slots. Failures are written one by one, with their retry
or archive decision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

import anyio

from .._codec import encode_value
from .._redis.broker import SCRIPTS, Call
from .._redis.keys import done_channel
from ..errors import BrokerUnavailable
from .claims import Claiming
from .lease import today
from .outage import MAX_BACKOFF
from .runner import Claimed, Outcome
from .state import log


class Running(Claiming):
    async def _run_slot(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._ready:
                c = self._ready.popleft()
            elif self._slots_closed:
                return
            else:
                slot: asyncio.Future[Claimed | None] = loop.create_future()
                self._idle_slots.append(slot)
                got = await slot
                if got is None:
                    return
                c = got
            await self._handle(c)

    def _close_slots(self) -> None:
        """Let the runners end once nothing is left to run."""
        self._slots_closed = True
        while self._idle_slots:
            slot = self._idle_slots.popleft()
            if not slot.done():
                slot.set_result(None)

    async def _handle(self, c: Claimed) -> None:
        key, queue, task_id = self._keys[c.queue].progress, c.queue, c.id

        # The sink captures the task's names, not the task itself: the task holds the
        # Context that holds the sink, and a cycle would keep every finished task in
        # memory until the garbage collector's next full pass (megabytes under load).
        async def progress(value: Any) -> None:
            data = encode_value(value)
            channel = done_channel(self._broker.prefix, queue)
            commands = [("HSET", key, task_id, data), ("PUBLISH", channel, f"progress|{task_id}")]
            await self._broker.run(lambda: self._broker.scripts([], commands))

        outcome = await self._runner.run(c, progress)
        c.ctx = c.scope = None  # the attempt is over: nothing can cancel it now
        await self._record(c, outcome)

    async def _record(self, c: Claimed, outcome: Outcome) -> None:
        kind = outcome.kind
        if kind == "ack":
            self._acks.setdefault(c.queue, []).append((c, outcome.result))
            self._ack_event.set()
            return
        if kind == "requeue":
            self._requeue.setdefault(c.queue, []).append(c)
            self._forget(c)
            return
        if kind == "drop":
            log.warning(
                "task %s (%s) on %s: lease lost, handler cancelled; another worker owns it now",
                c.id,
                c.body.type,
                c.queue,
            )
            self._forget(c)
            # If our heartbeat renewed the lease before any reaper saw it expire, the
            # task is still in our (live) lease list: the audit gives it back.
            self._suspect.add(c.queue)
            return
        try:
            await self._write_failure(c, outcome)
        except BrokerUnavailable as exc:
            log.error(
                "task %s (%s) on %s: could not write its %s before the lease would lapse "
                "(%s); it will run again",
                c.id, c.body.type, c.queue, outcome.kind, exc,
            )  # fmt: skip
            self._suspect.add(c.queue)
        finally:
            self._forget(c)

    async def _write_failure(self, c: Claimed, o: Outcome) -> None:
        k = self._keys[c.queue]
        now = int(time.time() * 1000)
        due = now + int(o.delay * 1000)
        keys = (
            self._lease[c.queue], k.pending, k.tasks, k.states, k.retry, k.archived, k.uniq,
            k.uniq_exp, k.stats, k.retried, k.errors, k.failed_at, k.progress, k.results,
            k.cancels,
        )  # fmt: skip
        counted = "0" if o.kind in ("revoke", "again") else "1"
        args = [now, today(), c.id, c.token, o.kind, due, o.error[:4000], c.digest, counted]
        notices = []
        if o.kind in ("archive", "revoke"):
            kind = "archived" if o.kind == "archive" else "revoked"
            notices = [("PUBLISH", done_channel(self._broker.prefix, c.queue), f"{kind}|{c.id}")]
        call: Call = (SCRIPTS.fail, keys, args)
        ok = (await self._persist(lambda: self._broker.scripts([call], notices)))[0]
        if not ok:
            log.warning(
                "task %s (%s) on %s: late %s discarded, the task is no longer ours",
                c.id, c.body.type, c.queue, o.kind,
            )  # fmt: skip
            return
        if o.kind == "revoke":
            log.info("task %s (%s) on %s: revoked", c.id, c.body.type, c.queue)
            return
        attempt = c.retried + 1
        where = "archived" if o.kind == "archive" else f"retry in {o.delay:.3g} s"
        log.warning(
            "task %s (%s) on %s failed, attempt %d of %d, %s: %s",
            c.id, c.body.type, c.queue, attempt, c.max_retry + 1, where, o.error,
        )  # fmt: skip
        if o.kind in ("retry", "again"):
            self._leases.wake_forwarder(due)

    async def _ack_loop(self) -> None:
        while True:
            event = self._ack_event
            if not self._acks:
                await event.wait()
            self._ack_event = anyio.Event()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        batch, self._acks = self._acks, {}
        if not batch:
            return
        now = int(time.time() * 1000)
        day = today()
        calls: list[Call] = []
        for q, items in batch.items():
            k = self._keys[q]
            keys = (
                self._lease[q], k.tasks, k.states, k.completed, k.results, k.uniq, k.uniq_exp,
                k.stats, k.retried, k.errors, k.failed_at, k.progress, k.cancels,
            )  # fmt: skip
            plain: list[Any] = []
            full: list[Any] = []
            for c, result in items:
                if c.body.retention > 0 or c.digest:
                    full += [c.id, c.token, int(c.body.retention * 1000), result, c.digest]
                else:
                    plain += [c.id, c.token]
            calls.append((SCRIPTS.ack, keys, [now, day, len(plain) // 2, *plain, *full]))
        # Waiting Client.result calls hear of kept results in the same round trip.
        notices = [
            ("PUBLISH", done_channel(self._broker.prefix, q), "completed|" + ",".join(ids))
            for q, items in batch.items()
            if (ids := [c.id for c, _ in items if c.body.retention > 0])
        ]
        # A busy worker claims the tasks that take the acked tasks' slots in the same
        # round trip: the server runs the claims after the acks, so the worker never
        # holds more tasks than slots, and a claim costs no round trip of its own.
        plan: dict[str, int] = {}
        if self._slot_waiter is not None and not self._stopping and not self._suspect:
            plan = self._plan(min(sum(len(v) for v in batch.values()), self.batch_size))
        claims = self._claim_calls(plan)
        self._free -= sum(plan.values())
        unsent = claims

        def write() -> Awaitable[list[Any]]:
            # Only the first attempt carries the claims: after a failure they may have
            # run with their reply lost, and the audit sorts that out instead.
            nonlocal unsent
            sending, unsent = unsent, []
            return self._broker.scripts([*calls, *sending], notices)

        try:
            replies = await self._persist(write)
        except BrokerUnavailable as exc:
            log.error(
                "could not write %d ack(s) before the lease expired (%s); those tasks will "
                "run again once the reaper returns them",
                sum(len(v) for v in batch.values()),
                exc,
            )
            replies = [[] for _ in batch]
            self._suspect.update(batch)
        claimed = len(replies) == len(calls) + len(claims) + len(notices) and bool(claims)
        claim_replies = replies[len(calls) : len(calls) + len(claims)]
        replies = replies[: len(calls)]
        for (q, items), stale in zip(batch.items(), replies, strict=True):
            for sid in stale:
                log.warning(
                    "task %s on %s: late ack discarded, the task is no longer ours", sid.decode(), q
                )
            debug = log.isEnabledFor(logging.DEBUG)
            for c, _ in items:
                if debug:
                    log.debug("task %s (%s) on %s: completed", c.id, c.body.type, q)
                self._forget(c, slots=0)
            self._release(len(items))
        if claimed:
            self._outage.ok()
            await self._claimed(plan, claim_replies)
        elif plan:
            self._claim_lost(plan)

    async def _persist(self, fn: Any) -> Any:
        """Write an outcome, retrying connection failures with backoff for as long as
        the lease is still ours; after that the reaper owns the task."""
        delay = 0.05
        while True:
            try:
                result = await self._broker.run(fn)
                self._outage.ok()
                return result
            except BrokerUnavailable as exc:
                left = self._leases.valid_until - time.monotonic()
                if left <= 0:
                    raise
                # The last try comes just before the lease would lapse, not up to a
                # whole backoff step earlier.
                await self._outage.failed(exc, sleep=min(delay, left))
                delay = min(delay * 2, MAX_BACKOFF)
