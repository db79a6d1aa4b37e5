"""Claiming: batches while a backlog exists, one blocking move per queue when idle.

While a queue has a backlog, the dispatcher claims batches with a non-blocking script
(up to the free slots, split across queues by weight). When every queue came back dry,
it blocks on BLMOVE, one blocking connection per queue, each holding one reserved slot,
so an idle worker wakes within milliseconds of an enqueue without polling. Either way a
claimed id sits in this worker's lease list before anything else happens, so a crash
at any point leaves it where a reaper finds it.

A busy worker also claims through its ack writer, which asks ``after_acks`` for the
claims to send with its acks and hands the replies back to ``claimed``.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc

from .._codec import decode_message
from .._redis import scripts
from .._redis.broker import Broker
from .._redis.keys import QueueKeys
from .._redis.scripts import Call, ClaimedTask, ClaimRefused
from ..errors import BrokerUnavailable
from .audit import LeaseAudit
from .held import Held
from .outage import Outage
from .processor import Handoff
from .runner import Claimed
from .slots import Slots

log = logging.getLogger("aqueue.worker")

# How long one BLMOVE blocks before the worker re-checks pauses and shutdown.
BLOCK_SECONDS = 1.0


class Dispatcher:
    """Fills the free slots with claimed tasks until ``stop()``."""

    def __init__(
        self,
        broker: Broker,
        keys: Mapping[str, QueueKeys],
        leases: Mapping[str, str],
        worker_id: str,
        weights: Mapping[str, float],
        *,
        strict_priority: bool,
        batch_size: int,
        slots: Slots,
        held: Held,
        handoff: Handoff,
        audit: LeaseAudit,
        outage: Outage,
        renew: Callable[[], Awaitable[None]],
    ) -> None:
        self._broker = broker
        self._keys = keys
        self._leases = leases
        self._id = worker_id
        self._weights = weights
        # Claim order for blocking and strict priority: heaviest first.
        self._order = sorted(weights, key=lambda q: -weights[q])
        self._strict = strict_priority
        self._batch_size = batch_size
        self._slots = slots
        self._held = held
        self._handoff = handoff
        self._audit = audit
        self._outage = outage
        self._renew = renew
        self._stopping = False
        self._seq = 0
        self._paused_until: dict[str, float] = {}
        self._blocking: set[str] = set()
        self._blockers: anyio.abc.TaskGroup | None = None
        # Set, and replaced, whenever a blocking claim ends (or to stop).
        self._event = anyio.Event()
        self._scope = anyio.CancelScope()

    async def run(self) -> None:
        with self._scope:
            async with anyio.create_task_group() as blockers:
                self._blockers = blockers
                await self._fill()

    def stop(self) -> None:
        """Stop claiming; blocking claims in flight are abandoned."""
        self._stopping = True
        self._scope.cancel()
        self._slots.wake()
        self._wake()

    def _wake(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def _fill(self) -> None:
        slots, audit, blocking = self._slots, self._audit, self._blocking
        while not self._stopping:
            if audit.due(blocking):
                await audit.run(blocking)
            if slots.free <= 0:
                await slots.wait()
                continue
            if await self._burst():
                continue
            await self._block()

    # -- bursts --------------------------------------------------------------------------

    async def _burst(self) -> bool:
        """Claim without blocking until slots are full or every queue is dry."""
        dry: set[str] = set()
        claimed = False
        slots = self._slots
        while not self._stopping and slots.free > 0:
            plan = self._plan(min(slots.free, self._batch_size), dry)
            if not plan:
                break
            got = await self._claim(plan)
            for q, asked in plan.items():
                if got.get(q, 0) < asked:
                    dry.add(q)
            claimed = claimed or sum(got.values()) > 0
        return claimed

    def _available(self) -> list[str]:
        now = time.monotonic()
        return [q for q in self._order if self._paused_until.get(q, 0.0) <= now]

    def _plan(self, n: int, dry: set[str] | frozenset[str] = frozenset()) -> dict[str, int]:
        """How many of ``n`` tasks to ask of each queue: by weight, or all of the
        heaviest under strict priority; nothing if every queue is paused or dry."""
        candidates = [q for q in self._available() if q not in dry]
        if not candidates or n <= 0:
            return {}
        if self._strict or len(candidates) == 1:
            return {candidates[0]: n}
        weights = [self._weights[q] for q in candidates]
        return dict(Counter(random.choices(candidates, weights=weights, k=n)))

    def _calls(self, plan: Mapping[str, int], moved: str = "") -> list[Call]:
        now = int(time.time() * 1000)
        keys, leases, worker_id = self._keys, self._leases, self._id
        calls: list[Call] = []
        for q, n in plan.items():
            calls.append(scripts.claim(keys[q], leases[q], n, worker_id, self._seq, now, moved))
            self._seq += n + 1
        return calls

    async def _claim(self, plan: Mapping[str, int], moved: str = "") -> dict[str, int]:
        """Run the claim script for each queue of ``plan`` in one round trip.

        The slots are taken before the call and the unused ones given back after, so a
        concurrent claim can never overshoot the concurrency limit (a blocking claim's
        ``moved`` id came with its own slot).
        """
        calls = self._calls(plan, moved)
        if not moved:
            self._slots.take(sum(plan.values()))
        broker = self._broker
        try:
            replies = await broker.run(lambda: broker.scripts(calls))
        except BrokerUnavailable as exc:
            self.lost(plan, moved)
            await self._outage.failed(exc)
            return {}
        self._outage.ok()
        return await self.claimed(plan, replies, moved)

    # -- with the acks -------------------------------------------------------------------

    def after_acks(self, n: int) -> tuple[dict[str, int], list[Call]]:
        """The claims to send with ``n`` acks, their slots taken: some only while every
        slot is taken (the ack writer's round trip then saves the dispatcher one), and
        none while stopping or while a queue waits for its audit."""
        if not self._slots.awaited or self._stopping or not self._audit.clear:
            return {}, []
        plan = self._plan(min(n, self._batch_size))
        self._slots.take(sum(plan.values()))
        return plan, self._calls(plan)

    def lost(self, plan: Mapping[str, int], moved: str = "") -> None:
        """The claim may have run with its reply lost: audit these lease lists."""
        self._audit.mark(plan)
        self._slots.give(sum(plan.values()) if not moved else 0)

    async def claimed(
        self, plan: Mapping[str, int], replies: Sequence[Any], moved: str = ""
    ) -> dict[str, int]:
        """Start what the claim scripts of ``plan`` returned; give back unused slots."""
        got: dict[str, int] = {}
        lost = False
        debug = log.isEnabledFor(logging.DEBUG)
        for (q, n), reply in zip(plan.items(), replies, strict=True):
            claimed = scripts.parse_claim(reply)
            count = 0
            if isinstance(claimed, list):
                for item in claimed:
                    self._start(q, item, debug)
                count = len(claimed)
            elif claimed is ClaimRefused.PAUSED:
                self._paused_until[q] = time.monotonic() + BLOCK_SECONDS
            else:
                lost = True
            got[q] = count
            if not moved:
                self._slots.give(max(0, n - count))
        if lost:
            # Our lease had expired (or the server lost its data): renew before claiming
            # again, so that everything we hold is covered by a live lease.
            await self._renew()
        return got

    def _start(self, queue: str, item: ClaimedTask, debug: bool) -> None:
        raw_id, raw_token, message, retried = item
        max_retry, digest, body = decode_message(message)
        c = Claimed(
            queue, raw_id.decode(), raw_token.decode(), max_retry, digest, body, int(retried)
        )
        self._held.add(c)
        if debug:
            log.debug(
                "task %s (%s) on %s: active, attempt %d", c.id, body.type, queue, c.retried + 1
            )
        self._handoff.put(c)

    # -- blocking claims -----------------------------------------------------------------

    async def _block(self) -> None:
        """Block on every available queue at once, one reserved slot each."""
        assert self._blockers is not None
        queues = [q for q in self._available() if q not in self._blocking]
        for q in queues[: self._slots.free]:
            self._slots.take(1)
            self._blocking.add(q)
            self._blockers.start_soon(self._block_on, q)
        event = self._event
        if not self._blocking:
            # Everything is paused: look again when the first pause check is due.
            wait = min(self._paused_until.values(), default=time.monotonic()) - time.monotonic()
            with anyio.move_on_after(max(wait, 0.05)):
                await event.wait()
            return
        await event.wait()

    async def _block_on(self, q: str) -> None:
        got = 0
        try:
            moved = await self._move(q)
            if moved is not None:
                got = (await self._claim({q: 0}, moved=moved.decode())).get(q, 0)
        finally:
            if not got:
                self._slots.give(1)  # the slot reserved for this blocker
            self._blocking.discard(q)
            self._wake()

    async def _move(self, q: str) -> bytes | None:
        """BLMOVE one id from the queue into our lease list: the id, or None.

        Not pipelined with the claim script, though that would save a round trip: the
        script would mark the task active while a frozen worker has not read the move's
        reply, and a reaper would then count an attempt for a task that never started.
        Moved but unclaimed, it goes back uncounted.
        """
        move = ("BLMOVE", self._keys[q].pending, self._leases[q], "RIGHT", "LEFT", BLOCK_SECONDS)
        broker = self._broker
        try:
            (moved,) = await broker.run(
                lambda: broker.scripts([], [move]), timeout=broker.timeout + BLOCK_SECONDS
            )
        except BrokerUnavailable as exc:
            self._audit.mark([q])  # the move may have happened, its reply lost
            await self._outage.failed(exc)
            return None
        self._outage.ok()
        return moved  # type: ignore[no-any-return]
