"""The lease audit: ids stranded in this worker's own, live lease lists.

No reaper touches a live lease, so an id can be left in ours when a reply is lost: a
claim or a blocking move that ran on the server while its reply never arrived, or an
outcome that could not be written in time. Whoever sees such a loss marks the queue
suspect; the dispatcher then runs the audit between its own claims (``orphans.lua``
returns every id of the lease list this worker does not hold to the head of the
queue, without counting an attempt). The heartbeat marks, once per ``lease_ttl``, every
queue this worker claimed from or wrote outcomes to lately, for losses nobody saw (a
failover that dropped an acknowledged write): a lost write can only strand an id where
it was written, so a worker serving a thousand idle queues audits none of them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Set

from .._redis import scripts
from .._redis.broker import Broker
from .._redis.keys import QueueKeys
from .._redis.scripts import Call
from ..errors import BrokerUnavailable
from .held import Held
from .outage import Outage

log = logging.getLogger("aqueue.worker")


class LeaseAudit:
    """The suspect queues and the audit that clears them; one per run, shared by the
    dispatcher, the outcome writer and the heartbeat, which each mark what they lost."""

    def __init__(
        self,
        broker: Broker,
        keys: Mapping[str, QueueKeys],
        leases: Mapping[str, str],
        held: Held,
        outage: Outage,
    ) -> None:
        self._broker = broker
        self._keys = keys
        self._leases = leases
        self._held = held
        self._outage = outage
        # Queues whose lease list may hold ids we do not know.
        self._suspect: set[str] = set()
        # Queues claimed from or written to since the last mark_all, and before it;
        # at first every queue (a worker id reused after a crash finds its
        # predecessor's lease lists).
        self._touched: set[str] = set()
        self._touched_before: set[str] = set(keys)

    @property
    def clear(self) -> bool:
        """No queue is suspect."""
        return not self._suspect

    def mark(self, queues: Iterable[str]) -> None:
        self._suspect.update(queues)

    def touch(self, queues: Iterable[str]) -> None:
        """This worker claimed from or wrote outcomes to ``queues``."""
        self._touched.update(queues)

    def mark_all(self) -> None:
        """Mark the queues written to since the call before last (a write lost in a
        failover is lost within moments of being made)."""
        self._suspect.update(self._touched, self._touched_before)
        self._touched_before, self._touched = self._touched, set()

    def due(self, busy: Set[str]) -> bool:
        """Whether a queue not in ``busy`` is suspect."""
        return not self._suspect <= busy

    async def run(self, busy: Set[str]) -> None:
        """Audit the suspect queues, except those in ``busy``: a claim in flight (a
        blocking one, or one riding in the ack writer's round trip) may have moved an id
        there that is not held yet and is no orphan. (Auditing those was a double run:
        the claimed id went back to the queue while its claimer started it too.)"""
        queues = sorted(self._suspect - busy)
        calls: list[Call] = [
            scripts.orphans(self._keys[q], self._leases[q], self._held.ids(q)) for q in queues
        ]
        broker = self._broker
        try:
            replies = await broker.run(lambda: broker.scripts(calls))
        except BrokerUnavailable as exc:
            await self._outage.failed(exc)
            return
        self._outage.ok()
        self._suspect.difference_update(queues)
        for q, n in zip(queues, replies, strict=True):
            if n:
                log.warning("returned %d orphaned task(s) of queue %s to the queue", n, q)
