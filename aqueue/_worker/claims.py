"""Claiming: batches while a backlog exists, one blocking move per queue when idle.

While a queue has a backlog, the worker claims batches with a non-blocking script (up to
its free slots, split across queues by weight). When every queue came back dry, it
blocks on BLMOVE, one blocking connection per queue, each holding one reserved slot, so
an idle worker wakes within milliseconds of an enqueue without polling. Either way a
claimed id sits in this worker's lease list before anything else happens, so a crash at
any point leaves it where a reaper finds it.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from .._codec import decode_message
from .._redis.broker import SCRIPTS, Call
from ..errors import BrokerUnavailable
from .runner import Claimed
from .state import BLOCK_SECONDS, WorkerState, log


class Claiming(WorkerState):
    async def _dispatch(self) -> None:
        while not self._stopping:
            if self._suspect - self._blocking:
                await self._audit()
            if self._free <= 0:
                self._slot_waiter = anyio.Event()
                await self._slot_waiter.wait()
                continue
            if await self._claim_burst():
                continue
            await self._claim_blocking()

    async def _audit(self) -> None:
        """Return ids our lease lists hold but we do not (see orphans.lua).

        Runs from the dispatcher, between its own claims, and skips queues with a
        blocking claim in flight: an id that claim moved is not an orphan.
        """
        queues = sorted(self._suspect - self._blocking)
        calls: list[Call] = []
        for q in queues:
            k = self._keys[q]
            held = [c.id for c in self._held.values() if c.queue == q]
            calls.append((SCRIPTS.orphans, (self._lease[q], k.pending, k.states), held))
        try:
            replies = await self._broker.run(lambda: self._broker.scripts(calls))
        except BrokerUnavailable as exc:
            await self._outage.failed(exc)
            return
        self._outage.ok()
        self._suspect.difference_update(queues)
        for q, n in zip(queues, replies, strict=True):
            if n:
                log.warning("returned %d orphaned task(s) of queue %s to the queue", n, q)

    def _available(self) -> list[str]:
        now = time.monotonic()
        return [q for q in self._order if self._paused_until.get(q, 0.0) <= now]

    async def _claim_burst(self) -> bool:
        """Claim without blocking until slots are full or every queue is dry."""
        dry: set[str] = set()
        claimed = False
        while not self._stopping and self._free > 0:
            plan = self._plan(min(self._free, self.batch_size), dry)
            if not plan:
                break
            got = await self._claim(plan)
            for q, asked in plan.items():
                if got.get(q, 0) < asked:
                    dry.add(q)
            claimed = claimed or sum(got.values()) > 0
        return claimed

    def _plan(self, n: int, dry: set[str] | frozenset[str] = frozenset()) -> dict[str, int]:
        """How many of ``n`` tasks to ask of each queue: by weight, or all of the
        heaviest under strict priority; nothing if every queue is paused or dry."""
        candidates = [q for q in self._available() if q not in dry]
        if not candidates or n <= 0:
            return {}
        if self.strict_priority or len(candidates) == 1:
            return {candidates[0]: n}
        weights = [self.queues[q] for q in candidates]
        return dict(Counter(random.choices(candidates, weights=weights, k=n)))

    def _claim_calls(self, plan: Mapping[str, int], moved: str = "") -> list[Call]:
        now = int(time.time() * 1000)
        calls: list[Call] = []
        for q, n in plan.items():
            k = self._keys[q]
            keys = (k.pending, self._lease[q], k.tasks, k.states, k.paused, k.leases, k.retried)
            calls.append((SCRIPTS.claim, keys, [n, self.id, self._seq, now, moved]))
            self._seq += n + 1
        return calls

    async def _claim(self, plan: Mapping[str, int], moved: str = "") -> dict[str, int]:
        """Run the claim script for each queue of ``plan`` in one round trip.

        The slots are taken before the call and the unused ones given back after, so a
        concurrent claim can never overshoot the concurrency limit.
        """
        calls = self._claim_calls(plan, moved)
        if not moved:
            self._free -= sum(plan.values())
        try:
            replies = await self._broker.run(lambda: self._broker.scripts(calls))
        except BrokerUnavailable as exc:
            self._claim_lost(plan, moved)
            await self._outage.failed(exc)
            return {}
        self._outage.ok()
        return await self._claimed(plan, replies, moved)

    def _claim_lost(self, plan: Mapping[str, int], moved: str = "") -> None:
        """The claim may have run with its reply lost: audit these lease lists."""
        self._suspect.update(plan)
        self._release(sum(plan.values()) if not moved else 0)

    async def _claimed(
        self, plan: Mapping[str, int], replies: Sequence[Any], moved: str = ""
    ) -> dict[str, int]:
        """Start what the claim scripts of ``plan`` returned; give back unused slots."""
        got: dict[str, int] = {}
        lost = False
        for (q, n), reply in zip(plan.items(), replies, strict=True):
            count = 0
            if reply == -1:
                self._paused_until[q] = time.monotonic() + BLOCK_SECONDS
            elif reply == -2:
                lost = True
            else:
                for i in range(0, len(reply), 4):
                    self._start(q, reply[i : i + 4])
                    count += 1
            got[q] = count
            if not moved:
                self._release(max(0, n - count))
        if lost:
            # Our lease had expired (or the server lost its data): renew before claiming
            # again, so that everything we hold is covered by a live lease.
            await self._leases.renew()
        return got

    async def _claim_blocking(self) -> None:
        """Block on every available queue at once, one reserved slot each."""
        queues = [q for q in self._available() if q not in self._blocking]
        for q in queues[: self._free]:
            self._free -= 1
            self._blocking.add(q)
            self._blockers.start_soon(self._block_on, q)
        event = self._claim_event
        if not self._blocking:
            # Everything is paused: look again when the first pause check is due.
            wait = min(self._paused_until.values(), default=time.monotonic()) - time.monotonic()
            with anyio.move_on_after(max(wait, 0.05)):
                await event.wait()
            return
        await event.wait()

    async def _block_on(self, q: str) -> None:
        k = self._keys[q]
        got = 0
        try:
            # Not pipelined with the claim script, though that would save a round trip:
            # the script would mark the task active while a frozen worker has not read
            # the move's reply, and a reaper would then count an attempt for a task
            # that never started. Moved but unclaimed, it goes back uncounted.
            move = ("BLMOVE", k.pending, self._lease[q], "RIGHT", "LEFT", BLOCK_SECONDS)
            try:
                (moved,) = await self._broker.run(
                    lambda: self._broker.scripts([], [move]),
                    timeout=self._broker.timeout + BLOCK_SECONDS,
                )
            except BrokerUnavailable as exc:
                self._suspect.add(q)  # the move may have happened, its reply lost
                await self._outage.failed(exc)
                moved = None
            else:
                self._outage.ok()
            if moved is not None:
                got = (await self._claim({q: 0}, moved=moved.decode())).get(q, 0)
        finally:
            if not got:
                self._release(1)  # the slot reserved for this blocker
            self._blocking.discard(q)
            self._claim_event.set()
            self._claim_event = anyio.Event()

    def _start(self, queue: str, item: list[Any]) -> None:
        raw_id, raw_token, message, retried = item
        max_retry, digest, body = decode_message(message)
        c = Claimed(
            queue, raw_id.decode(), raw_token.decode(), max_retry, digest, body, int(retried)
        )
        self._held[(queue, c.id)] = c
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "task %s (%s) on %s: active, attempt %d", c.id, body.type, queue, c.retried + 1
            )
        while self._idle_slots:
            slot = self._idle_slots.popleft()
            if not slot.done():
                slot.set_result(c)
                return
        self._ready.append(c)
