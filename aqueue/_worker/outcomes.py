"""Writing the outcomes of finished attempts.

Successful attempts are acked in batches by one writer coroutine, which also sends the
next claims in the same round trip while the worker is busy; a slot is given back only
once its ack is written, so the worker never holds more claimed tasks than slots.
Failures are written one by one, with their retry or archive decision. Tasks cancelled
by a shutdown are kept for the lease keeper to return when the worker leaves.

A write that cannot reach the server is retried with backoff for as long as the lease
is valid. A retried write may find its work already done by an earlier try whose reply
was lost: its fencing token is then stale, as for a worker that lost the task, but that
is no news for the operator (logged at DEBUG and INFO, not WARNING).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import anyio

from .._flows import End, parse_end
from .._redis import scripts
from .._redis.broker import Broker
from .._redis.keys import QueueKeys, done_channel
from .._redis.scripts import Call
from ..errors import BrokerUnavailable
from .audit import LeaseAudit
from .claims import Dispatcher
from .held import Held
from .outage import MAX_BACKOFF, Outage
from .runner import Claimed, Kind, Outcome, today
from .slots import Slots

log = logging.getLogger("aqueue.worker")

T = TypeVar("T")

# Successful attempts waiting for their ack, by queue: the task and its encoded result.
Acks = dict[str, list[tuple[Claimed, bytes]]]

_NOT_COUNTED = frozenset({Kind.REVOKE, Kind.AGAIN})


class Lease(Protocol):
    """What the outcome writer needs of the lease: until when it is valid (writes are
    retried until then, and left to the reaper after)."""

    @property
    def valid_until(self) -> float:
        """``time.monotonic()`` at which the lease may have lapsed."""


class Outcomes:
    """Writes the outcomes of finished attempts: acks in batches (with the next claims),
    failures one by one, retried while the lease lasts; gives the slots back."""

    def __init__(
        self,
        broker: Broker,
        keys: Mapping[str, QueueKeys],
        leases: Mapping[str, str],
        *,
        held: Held,
        slots: Slots,
        audit: LeaseAudit,
        outage: Outage,
        lease: Lease,
        claims: Dispatcher,
        wake_forwarder: Callable[[int, str | None], None],
        flow_ends: Callable[[Mapping[str, list[End]]], None] = lambda ends: None,
    ) -> None:
        self._broker = broker
        self._keys = keys
        self._leases = leases
        self._held = held
        self._slots = slots
        self._audit = audit
        self._outage = outage
        self._lease = lease
        self._claims = claims
        self._wake_forwarder = wake_forwarder
        # Hands the flow pump the ends of workflow steps (queue -> ends) it wrote; an
        # empty mapping just wakes it (to sweep the outboxes).
        self._flow_ends = flow_ends
        self._acks: Acks = {}
        self._ack_event = anyio.Event()
        # Tasks cancelled by the shutdown, to go back to the head of their queues.
        self.requeued: dict[str, list[Claimed]] = {}

    async def record(self, c: Claimed, outcome: Outcome) -> None:
        """Write (or queue for writing) the outcome of ``c``'s attempt."""
        kind = outcome.kind
        if kind is Kind.ACK:
            self._acks.setdefault(c.queue, []).append((c, outcome.result))
            self._ack_event.set()
            return
        if kind is Kind.REQUEUE:
            self.requeued.setdefault(c.queue, []).append(c)
            self._end(c)
            return
        if kind is Kind.DROP:
            log.warning(
                "task %s (%s) on %s: lease lost, handler cancelled; another worker owns it now",
                c.id,
                c.body.type,
                c.queue,
            )
            self._end(c)
            # If our heartbeat renewed the lease before any reaper saw it expire, the
            # task is still in our (live) lease list: the audit gives it back.
            self._audit.mark([c.queue])
            return
        self._audit.touch([c.queue])
        try:
            await self._write_failure(c, outcome)
        except BrokerUnavailable as exc:
            log.error(
                "task %s (%s) on %s: could not write its %s before the lease would lapse "
                "(%s); it will run again",
                c.id, c.body.type, c.queue, kind, exc,
            )  # fmt: skip
            self._audit.mark([c.queue])
        finally:
            self._end(c)

    def requeue_held(self) -> None:
        """Every task still held goes back at shutdown, with no time to finish."""
        for c in self._held.take_all():
            self.requeued.setdefault(c.queue, []).append(c)

    def _end(self, c: Claimed) -> None:
        self._held.remove(c)
        self._slots.give(1)

    # -- failures ------------------------------------------------------------------------

    async def _write_failure(self, c: Claimed, o: Outcome) -> None:
        kind = o.kind
        now = int(time.time() * 1000)
        due = now + int(o.delay * 1000)
        call = scripts.fail(
            self._keys[c.queue], self._leases[c.queue], c.id, c.token, kind, now_ms=now,
            day=today(), due_ms=due, error=o.error[:4000], digest=c.digest,
            counted=kind not in _NOT_COUNTED, step=c.step,
        )  # fmt: skip
        notices = []
        if kind is Kind.ARCHIVE or kind is Kind.REVOKE:
            event = "archived" if kind is Kind.ARCHIVE else "revoked"
            notices = [("PUBLISH", done_channel(self._broker.prefix, c.queue), f"{event}|{c.id}")]
        broker = self._broker
        replies, retried = await self._persist(lambda: broker.scripts([call], notices))
        if not replies[0]:
            if retried:
                log.info(
                    "task %s (%s) on %s: late %s discarded on a retried write: the try whose "
                    "reply was lost most likely wrote it (%s)",
                    c.id, c.body.type, c.queue, kind, o.error,
                )  # fmt: skip
            else:
                log.warning(
                    "task %s (%s) on %s: late %s discarded, the task is no longer ours",
                    c.id, c.body.type, c.queue, kind,
                )  # fmt: skip
            return
        if c.step:
            self._flow_ends({c.queue: []})  # the pump records it from the outbox
        if kind is Kind.REVOKE:
            log.info("task %s (%s) on %s: revoked", c.id, c.body.type, c.queue)
            return
        attempt = c.retried + 1
        where = "archived" if kind is Kind.ARCHIVE else f"retry in {o.delay:.3g} s"
        log.warning(
            "task %s (%s) on %s failed, attempt %d of %d, %s: %s",
            c.id, c.body.type, c.queue, attempt, c.max_retry + 1, where, o.error,
        )  # fmt: skip
        if kind is Kind.RETRY or kind is Kind.AGAIN:
            self._wake_forwarder(due, c.queue)

    # -- acks ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Flush the acks whenever some are waiting."""
        while True:
            event = self._ack_event
            if not self._acks:
                await event.wait()
            self._ack_event = anyio.Event()
            await self.flush()

    async def flush(self) -> None:
        """Write every ack waiting, one ``ack.lua`` call per queue, in one round trip
        (with the next claims, if the worker is busy)."""
        batch, self._acks = self._acks, {}
        if not batch:
            return
        calls, notices = self._ack_calls(batch)
        # A busy worker claims the tasks that take the acked tasks' slots in the same
        # round trip: the server runs the claims after the acks, so the worker never
        # holds more tasks than slots, and a claim costs no round trip of its own.
        plan, claims = self._claims.after_acks(sum(len(v) for v in batch.values()))
        try:
            await self._flush(batch, calls, notices, plan, claims)
        finally:
            self._claims.landed(plan)

    async def _flush(
        self,
        batch: Acks,
        calls: list[Call],
        notices: list[tuple[Any, ...]],
        plan: dict[str, int],
        claims: list[Call],
    ) -> None:
        unsent = claims

        def write() -> Awaitable[list[Any]]:
            # Only the first try carries the claims: after a failure they may have run
            # with their reply lost, and the audit sorts that out instead.
            nonlocal unsent
            sending, unsent = unsent, []
            return self._broker.scripts([*calls, *sending], notices)

        try:
            replies, retried = await self._persist(write)
        except BrokerUnavailable as exc:
            log.error(
                "could not write %d ack(s) before the lease expired (%s); those tasks will "
                "run again once the reaper returns them",
                sum(len(v) for v in batch.values()),
                exc,
            )
            replies, retried = [[] for _ in batch], True
            self._audit.mark(batch)
        self._audit.touch(batch)
        self._acked(batch, replies[: len(calls)], retried)
        if any(c.step for items in batch.values() for c, _ in items):
            self._flow_ends(_step_ends(batch, replies[: len(calls)], retried))
        if claims and not retried:
            await self._claims.claimed(plan, replies[len(calls) : len(calls) + len(claims)])
        elif plan:
            self._claims.lost(plan)

    def _ack_calls(self, batch: Acks) -> tuple[list[Call], list[tuple[Any, ...]]]:
        """The ``ack.lua`` call of each queue, and the notices for kept results."""
        now = int(time.time() * 1000)
        day = today()
        calls: list[Call] = []
        for q, items in batch.items():
            plain: list[Any] = []
            full: list[Any] = []
            for c, result in items:
                if c.body.retention > 0 or c.digest:
                    retention = int(c.body.retention * 1000)
                    full += [c.id, c.token, retention, result, c.digest, c.step]
                else:
                    plain += [c.id, c.token]
            calls.append(scripts.ack(self._keys[q], self._leases[q], now, day, plain, full))
        # Waiting Client.result calls hear of kept results in the same round trip.
        notices: list[tuple[Any, ...]] = [
            ("PUBLISH", done_channel(self._broker.prefix, q), "completed|" + ",".join(ids))
            for q, items in batch.items()
            if (ids := [c.id for c, _ in items if c.body.retention > 0])
        ]
        return calls, notices

    def _acked(self, batch: Acks, stale: Sequence[Sequence[bytes]], retried: bool) -> None:
        """The acks are written (or given up): the tasks end, their slots are free."""
        remove, slots = self._held.remove, self._slots
        debug = log.isEnabledFor(logging.DEBUG)
        for (q, items), refused in zip(batch.items(), stale, strict=True):
            if refused:
                _log_stale_acks(q, refused, retried)
            for c, _ in items:
                if debug:
                    log.debug("task %s (%s) on %s: completed", c.id, c.body.type, q)
                remove(c)
            slots.give(len(items))

    # -- retrying ------------------------------------------------------------------------

    async def _persist(self, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Write an outcome, retrying connection failures with backoff for as long as
        the lease is still ours; after that the reaper owns the task. Returns the reply
        and whether the write was retried (an earlier try may have run)."""
        delay = 0.05
        retried = False
        while True:
            try:
                result = await self._broker.run(fn)
                self._outage.ok()
                return result, retried
            except BrokerUnavailable as exc:
                left = self._lease.valid_until - time.monotonic()
                if left <= 0:
                    raise
                # The last try comes just before the lease would lapse, not up to a
                # whole backoff step earlier.
                await self._outage.failed(exc, sleep=min(delay, left))
                delay = min(delay * 2, MAX_BACKOFF)
                retried = True


def _log_stale_acks(queue: str, ids: Sequence[bytes], retried: bool) -> None:
    if not retried:
        for sid in ids:
            log.warning(
                "task %s on %s: late ack discarded, the task is no longer ours", sid.decode(), queue
            )
        return
    # After a connection cut mid-write, the try whose reply was lost has most likely
    # acked these already: one line, not one warning per task.
    for sid in ids:
        log.debug("task %s on %s: late ack discarded on a retried write", sid.decode(), queue)
    log.info(
        "late ack discarded for %d task(s) on %s on a retried write: the try whose reply "
        "was lost most likely wrote them",
        len(ids),
        queue,
    )


def _step_ends(
    batch: Acks, stale: Sequence[Sequence[bytes]], retried: bool
) -> dict[str, list[End]]:
    """The workflow steps these acks completed, by queue, with their results: what the
    ack scripts pushed on the queues' outboxes. Not after a retried write (an earlier try
    may have written them, and the replies say nothing of it): the pump's sweep finds
    those in the outboxes."""
    ends: dict[str, list[End]] = {}
    if retried:
        return ends
    for (q, items), refused in zip(batch.items(), stale, strict=True):
        bad = set(refused)
        done = [
            parse_end(f"{c.step}|completed", result)
            for c, result in items
            if c.step and c.id.encode() not in bad
        ]
        if done:
            ends[q] = done
    return ends
