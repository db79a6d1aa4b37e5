"""Claiming: batches while a backlog exists, one blocking wait on the queues' bells when
idle.

While a queue has a backlog, the dispatcher claims batches with the claim script (up
to the free slots, split across queues by weight; the script applies priorities and
limits). A queue whose claim came back short is *dry*, and is not claimed from again
until its bell rings. When every queue is dry, the worker blocks on the bells (BLPOP)
with one reserved slot: on one server, one BLPOP on every queue's bell at once; on a
cluster, where the bells are in different slots, one per queue (up to the free slots).
Whatever makes a task startable (an enqueue, a retry or a delayed task come due, a slot
freed, a lease reaped, a lane let go by a new declaration) rings the queue's bell, and a
worker that takes less than a queue holds rings it again for the next: an idle worker
wakes within milliseconds without polling, and claims from the queue that rang. So an
idle worker's cost does not grow with the number of queues it serves; a few dry queues
are looked at again each second nothing rings, a safety net for a bell whose worker died
between popping it and claiming.
A task held back by a rate window is claimed when the window has room again: the
claim script says when, and the dispatcher claims again then. A claimed id sits in
this worker's lease list before anything else happens, so a crash at any point leaves
it where a reaper finds it.

A busy worker also claims through its ack writer, which asks ``after_acks`` for the
claims to send with its acks and hands the replies back to ``claimed``.
"""

from __future__ import annotations

import heapq
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import anyio
import anyio.abc

from .._codec import decode_message
from .._redis import scripts
from .._redis.broker import Broker
from .._redis.keys import QueueKeys
from .._redis.scripts import Call, ClaimedTask, ClaimRefused, ClaimReply
from ..errors import BrokerUnavailable
from .audit import LeaseAudit
from .held import Held
from .outage import Outage
from .processor import Handoff
from .runner import Claimed
from .slots import Slots
from .turns import Turns

log = logging.getLogger("aqueue.worker")


class Lease(Protocol):
    """What claiming needs of the lease keeper (``lease.LeaseKeeper``)."""

    ttl: float
    valid_until: float  # time.monotonic() until which the last renewal holds

    async def renew(self) -> None: ...


# How long one blocking wait lasts before the worker re-checks pauses and shutdown.
BLOCK_SECONDS = 1.0
# Dry queues looked at again after each blocking wait nobody rang (round robin).
RECHECK = 8
# The most queues one batch of claims is split across, when more have tasks (chosen
# by weight, see ``Dispatcher._stride``).
SPREAD = 8


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
        lease: Lease,
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
        self._lease = lease
        self._stopping = False
        self._seq = 0
        self._paused_until: dict[str, float] = {}
        # When (monotonic) the earliest rate window a claim reported has room again.
        self._due = float("inf")
        # Queues whose last claim a limit held back: their acks may free a slot.
        self._limited: set[str] = set()
        # Queues whose last claim came back short: not claimed from until their bell
        # rings (or a rate window opens, or the round robin of RECHECK gets to them).
        self._dry: set[str] = set()
        self._recheck = Turns()
        # Stride scheduling among many queues (``_stride``): each queue's pass.
        self._passes: dict[str, float] = {}
        # One blocking wait for every queue's bell on one server; one per queue on a
        # cluster, whose bells are in different slots.
        self._together = not broker.cluster
        self._blocking: set[str] = set()
        # Queues with claims in flight in the ack writer's round trip (``after_acks``
        # until ``landed``): like a blocking claim in flight, they may have moved ids into
        # our lease list that are not held yet, so the audit leaves those queues alone.
        self._riding: Counter[str] = Counter()
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
        slots, audit = self._slots, self._audit
        while not self._stopping:
            busy = self._blocking.union(self._riding)
            if audit.due(busy):
                await audit.run(busy)
            if slots.free <= 0:
                await slots.wait()
                continue
            if await self._burst():
                continue
            await self._block()

    # -- bursts --------------------------------------------------------------------------

    async def _burst(self) -> bool:
        """Claim without blocking until slots are full or every queue is dry."""
        claimed = False
        slots = self._slots
        while not self._stopping and slots.free > 0:
            plan = self._plan(min(slots.free, self._batch_size))
            if not plan:
                break
            got = await self._claim(plan)
            claimed = claimed or sum(got.values()) > 0
        return claimed

    def _available(self) -> list[str]:
        now = time.monotonic()
        return [q for q in self._order if self._paused_until.get(q, 0.0) <= now]

    def _plan(self, n: int) -> dict[str, int]:
        """How many of ``n`` tasks to ask of each queue: by weight, or all of the
        heaviest under strict priority; nothing if every queue is paused or dry."""
        dry = self._dry
        candidates = [q for q in self._available() if q not in dry]
        if not candidates or n <= 0:
            return {}
        if self._strict or len(candidates) == 1:
            return {candidates[0]: n}
        if len(candidates) > SPREAD:
            return self._stride(n, candidates)
        weights = [self._weights[q] for q in candidates]
        return dict(Counter(random.choices(candidates, weights=weights, k=n)))

    def _stride(self, n: int, candidates: list[str]) -> dict[str, int]:
        """A claim script runs per queue: among many queues, the batch goes to the
        ``SPREAD`` that are furthest behind their weight's share (stride scheduling),
        instead of one or two tasks asked of each of a hundred. Over time each queue is
        asked in proportion to its weight; one back from dry starts level with the
        others, not with the credit of the time it had nothing."""
        passes, weights = self._passes, self._weights
        level = min(passes.get(q, 0.0) for q in candidates)
        chosen = heapq.nsmallest(SPREAD, candidates, key=lambda q: passes.get(q, 0.0))
        each, extra = divmod(n, len(chosen))
        plan: dict[str, int] = {}
        for i, q in enumerate(chosen):
            asked = each + (1 if i < extra else 0)
            if asked:
                plan[q] = asked
                passes[q] = max(passes.get(q, 0.0), level) + asked / weights[q]
        return plan

    def _calls(self, plan: Mapping[str, int]) -> list[Call]:
        now = int(time.time() * 1000)
        keys, leases, worker_id = self._keys, self._leases, self._id
        calls: list[Call] = []
        for q, n in plan.items():
            calls.append(scripts.claim(keys[q], leases[q], n, worker_id, self._seq, now))
            self._seq += n + 1
        return calls

    async def _claim(self, plan: Mapping[str, int], reserved: bool = False) -> dict[str, int]:
        """Run the claim script for each queue of ``plan`` in one round trip.

        The slots are taken before the call and the unused ones given back after, so a
        concurrent claim can never overshoot the concurrency limit (a blocking claim's
        slot was ``reserved`` before it blocked).
        """
        if self._lapsing():
            try:
                await self._lease.renew()
            except BrokerUnavailable as exc:
                await self._outage.failed(exc)
                return {}
        calls = self._calls(plan)
        if not reserved:
            self._slots.take(sum(plan.values()))
        broker = self._broker
        try:
            replies = await broker.run(lambda: broker.scripts(calls))
        except BrokerUnavailable as exc:
            self.lost(plan, reserved)
            await self._outage.failed(exc)
            return {}
        self._outage.ok()
        return await self.claimed(plan, replies, reserved)

    # -- with the acks -------------------------------------------------------------------

    def after_acks(self, n: int) -> tuple[dict[str, int], list[Call]]:
        """The claims to send with ``n`` acks, their slots taken: some while every slot
        is taken (the ack writer's round trip then saves the dispatcher one) or while a
        limit holds tasks back (the acks may free its slots: the claims run right after
        them), and none while stopping, while a queue waits for its audit or while our
        lease needs renewing first."""
        if self._stopping or not self._audit.clear or self._lapsing():
            return {}, []
        if self._slots.awaited:
            plan = self._plan(min(n, self._batch_size))
        elif self._limited and self._slots.free > 0:
            available = [q for q in self._available() if q in self._limited]
            plan = {q: min(n, self._slots.free, self._batch_size) for q in available[:1]}
        else:
            return {}, []
        self._slots.take(sum(plan.values()))
        self._riding.update(plan.keys())
        return plan, self._calls(plan)

    def _lapsing(self) -> bool:
        """Whether our last successful renewal is more than two thirds of the lease old:
        the heartbeat missed a beat (a server outage, a slow renewal). We renew before
        claiming then, or we could claim tasks in the moments before our lease lapses,
        only to drop them and have them run again elsewhere."""
        return self._lease.valid_until - time.monotonic() < self._lease.ttl / 3

    def landed(self, plan: Mapping[str, int]) -> None:
        """The claims ``after_acks`` planned were handed to ``claimed`` or ``lost`` (or
        never sent): the audit may look at those queues again."""
        self._riding.subtract(plan.keys())
        self._riding = +self._riding  # drop the queues at zero

    def lost(self, plan: Mapping[str, int], reserved: bool = False) -> None:
        """The claim may have run with its reply lost: audit these lease lists."""
        self._audit.mark(plan)
        self._slots.give(sum(plan.values()) if not reserved else 0)

    async def claimed(
        self, plan: Mapping[str, int], replies: Sequence[Any], reserved: bool = False
    ) -> dict[str, int]:
        """Start what the claim scripts of ``plan`` returned; give back unused slots."""
        got: dict[str, int] = {}
        lost = False
        debug = log.isEnabledFor(logging.DEBUG)
        for (q, n), reply in zip(plan.items(), replies, strict=True):
            claimed = scripts.parse_claim(reply)
            count = 0
            if isinstance(claimed, ClaimReply):
                for item in claimed.tasks:
                    self._start(q, item, debug)
                count = len(claimed.tasks)
                if claimed.held_back or claimed.capped:
                    self._limited.add(q)
                else:
                    self._limited.discard(q)
                if claimed.wait_ms is not None:
                    self._due = min(self._due, time.monotonic() + claimed.wait_ms / 1000)
            elif claimed is ClaimRefused.PAUSED:
                self._paused_until[q] = time.monotonic() + BLOCK_SECONDS
            else:
                lost = True
            if count < n:
                self._dry.add(q)  # until its bell rings
            got[q] = count
            if not reserved:
                self._slots.give(max(0, n - count))
        self._audit.touch(q for q, count in got.items() if count)
        if lost:
            # Our lease had expired (or the server lost its data): renew before claiming
            # again, so that everything we hold is covered by a live lease.
            await self._lease.renew()
        return got

    def _start(self, queue: str, item: ClaimedTask, debug: bool) -> None:
        raw_id, raw_token, message, retried = item
        header, body = decode_message(message)
        c = Claimed(
            queue, raw_id.decode(), raw_token.decode(), header.max_retry, header.digest, body,
            int(retried), header.priority, header.limit_key, header.step,
        )  # fmt: skip
        self._held.add(c)
        if debug:
            log.debug(
                "task %s (%s) on %s: active, attempt %d", c.id, body.type, queue, c.retried + 1
            )
        self._handoff.put(c)

    # -- blocking claims -----------------------------------------------------------------

    async def _block(self) -> None:
        """Block on the bells of every available queue, with one reserved slot per
        blocking wait, until one ends or a rate window a claim reported has room."""
        assert self._blockers is not None
        queues = [q for q in self._available() if q not in self._blocking]
        if self._together:
            if queues and not self._blocking and self._slots.free > 0:
                self._start_blocking(queues)
        else:
            for q in queues[: self._slots.free]:
                self._start_blocking([q])
        event = self._event
        now = time.monotonic()
        wait = self._due - now
        if not self._blocking:
            # Everything is paused: look again when the first pause check is due.
            paused = min(self._paused_until.values(), default=now) - now
            wait = min(wait, max(paused, 0.05))
        if wait < float("inf"):
            with anyio.move_on_after(max(wait, 0.0)):
                await event.wait()
            if time.monotonic() >= self._due:
                self._due = float("inf")  # the next burst claims it, and learns the next
                self._dry.clear()  # the queues it held back may have room now
            return
        await event.wait()

    def _start_blocking(self, queues: list[str]) -> None:
        assert self._blockers is not None
        self._slots.take(1)
        self._blocking.update(queues)
        self._blockers.start_soon(self._block_on, queues)

    async def _block_on(self, queues: list[str]) -> None:
        """Wait for a bell of ``queues`` with a reserved slot; when one rings, claim
        from its queue as much as the free slots allow (a freed limit slot or a batch
        enqueue may let more than one task start)."""
        got = 0
        try:
            q = await self._ring(queues)
            if q is not None:
                self._dry.discard(q)
                free = self._slots.free + 1  # with the reserved slot
                n = max(1, min(free, self._batch_size))
                self._slots.take(n - 1)
                got = (await self._claim({q: n}, reserved=True)).get(q, 0)
                self._slots.give(max(0, n - 1 - max(0, got - 1)))
            elif self._dry:
                self._look_again(queues)
        finally:
            if not got:
                self._slots.give(1)  # the slot reserved for this blocker
            self._blocking.difference_update(queues)
            self._wake()

    def _look_again(self, heard: list[str]) -> None:
        """Nothing rang for a whole wait: let the next burst look at a few dry queues
        again (round robin), in case a bell was popped by a worker that died before it
        claimed. On a cluster, where a blocking wait hears one queue's bell, every dry
        queue no wait hears is looked at again (as many claim calls a second as
        queues past the free slots: the price of bells in different slots)."""
        if not self._together:
            blocked = self._blocking.difference(heard)
            self._dry.intersection_update(blocked)
            return
        self._dry.difference_update(self._recheck.take(self._order, RECHECK))

    async def _ring(self, queues: list[str]) -> str | None:
        """Wait for a bell of ``queues``: the queue whose bell rang (a task may be
        startable there), or None when none rang in time."""
        bells = {self._keys[q].bell: q for q in queues}
        pop = ("BLPOP", *bells, BLOCK_SECONDS)
        broker = self._broker
        try:
            (reply,) = await broker.run(
                lambda: broker.scripts([], [pop]), timeout=broker.timeout + BLOCK_SECONDS
            )
        except BrokerUnavailable as exc:
            await self._outage.failed(exc)
            return None
        self._outage.ok()
        if reply is None:
            return None
        key = reply[0]
        return bells[key.decode() if isinstance(key, bytes) else key]
