"""A worker's lease: the heartbeat that renews it, the worker registry, and leaving.

The heartbeat renews this worker's lease on each of its queues every ``lease_ttl / 3``.
If a renewal finds the lease had already expired (the worker was frozen, or cut off
for longer than the lease), a reaper may have handed its tasks to someone else, so the
handlers still running for that queue are cancelled; their late writes would be
refused by the fencing token anyway. The same happens, without asking the server,
once the last successful renewal is older than the lease.

Each renewal also registers the worker (``Inspector.workers()``) and its queue names,
and looks up cancel requests for the tasks it holds that pub/sub may have missed.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio

from .._codec import encode_value
from .._redis import scripts
from .._redis.broker import Broker
from .._redis.keys import QueueKeys, lease_index_key, queues_key, worker_key, workers_key
from ..errors import BrokerUnavailable
from .audit import LeaseAudit
from .boot import scripts_when_full
from .held import Held
from .outage import Outage
from .runner import Claimed, Reason
from .successor import process_namespace

log = logging.getLogger("aqueue.worker")


class LeaseKeeper:
    """Renews the lease, registers the worker, and leaves at shutdown; cancels the
    handlers of a queue whose lease turned out to have expired."""

    def __init__(
        self,
        broker: Broker,
        worker_id: str,
        keys: Mapping[str, QueueKeys],
        leases: Mapping[str, str],
        *,
        weights: Mapping[str, float],
        concurrency: int,
        lease_ttl: float,
        held: Held,
        audit: LeaseAudit,
        outage: Outage,
    ) -> None:
        self._broker = broker
        self._id = worker_id
        self._keys = keys
        self._leases = leases
        self._weights = weights
        self._concurrency = concurrency
        self.ttl = lease_ttl
        self._ttl_ms = int(lease_ttl * 1000)
        self._held = held
        self._audit = audit
        self._outage = outage
        # time.monotonic() at which the lease may have lapsed: lease_ttl after the
        # last renewal sent that succeeded.
        self.valid_until = math.inf
        self._card_fields: dict[str, Any] | None = None
        # Publishes the Mux's limits again (set by the worker once first contact exists).
        self.redeclare: Callable[[], Awaitable[None]] | None = None

    def _card(self) -> bytes:
        """This worker as ``Inspector.workers()`` shows it, with what the dashboard
        adds: the lease length (the registry holds this beat's expiry: the beat's time
        follows) and when each held task was claimed (as of this beat)."""
        if self._card_fields is None:
            self._card_fields = {
                "id": self._id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "queues": dict(self._weights),
                "concurrency": self._concurrency,
                "started_at": int(time.time() * 1000),
                "lease_ttl": self.ttl,
                # Where the pid means something (``successor``).
                "ns": process_namespace(),
            }
        return encode_value({**self._card_fields, "held": self._held.since()})

    async def renew(self) -> None:
        sent = time.monotonic()
        now = int(time.time() * 1000)
        expiry = now + self._ttl_ms
        # One call for every queue on one server; one per queue on a cluster.
        keys = list(self._keys.values())
        groups = [[k] for k in keys] if self._broker.cluster else [keys]
        calls = [scripts.heartbeat(g, self._id, now, expiry) for g in groups]
        # Re-registering the queues each time covers a server that lost its data.
        prefix = self._broker.prefix
        extra: list[tuple[Any, ...]] = [
            ("SADD", queues_key(prefix), *self._keys),
            ("ZADD", workers_key(prefix), expiry, self._id),
            ("ZADD", lease_index_key(prefix), expiry, self._id),
            ("SET", worker_key(prefix, self._id), self._card(), "PX", self._ttl_ms),
            ("ZREMRANGEBYSCORE", workers_key(prefix), "-inf", now),
        ]
        # Cancel requests are persisted: one missed on pub/sub is found here.
        asked_from = len(calls) + len(extra)
        held = [(c.queue, c.id) for c in self._held]
        extra += [("SMISMEMBER", self._keys[q].cancels, i) for q, i in held]
        broker = self._broker
        # A full server (maxmemory, noeviction) refuses the registry's plain writes;
        # the lease itself (an allow-oom script) must still be renewed.
        replies = await broker.run(lambda: scripts_when_full(broker, calls, extra))
        for (q, i), asked in zip(held, replies[asked_from:], strict=True):
            if asked and not isinstance(asked, BaseException) and asked[0]:
                self._held.cancel(q, i)
        self.valid_until = sent + self.ttl
        lost = False
        flags = [flag for reply in replies[: len(calls)] for flag in reply]
        for q, live in zip(self._keys, flags, strict=True):
            if not live:
                lost = True
                n = self._held.cancel_queue(q, Reason.LOST)
                if n:
                    log.warning(
                        "lease of worker %s on queue %s had expired: cancelled %d handler(s) "
                        "whose tasks may now run elsewhere",
                        self._id,
                        q,
                        n,
                    )

        if lost and self.redeclare is not None:
            # A lease gone may be a server that lost its data: its limits went too.
            await self.redeclare()

    async def run(self) -> None:
        """The heartbeat: renew every ``lease_ttl / 3``."""
        beats = 0
        while True:
            await anyio.sleep(self.ttl / 3)
            beats += 1
            if beats % 3 == 0:
                # Once per lease_ttl, audit our own lease lists: an id we do not hold
                # can be left there by any lost write (a failover that dropped an ack,
                # a reply lost on a cut connection), and no reaper touches a live lease.
                self._audit.mark_all()
            try:
                await self.renew()
                self._outage.ok()
            except BrokerUnavailable as exc:
                if time.monotonic() >= self.valid_until and self._held:
                    log.warning(
                        "could not renew the lease of worker %s for %g s: cancelling its "
                        "%d handler(s), whose tasks the reaper will return",
                        self._id,
                        self.ttl,
                        len(self._held),
                    )
                    self._held.cancel_all(Reason.LOST)
                await self._outage.failed(exc, sleep=0)

    async def leave(self, unfinished: Mapping[str, Sequence[Claimed]]) -> int:
        """At shutdown: return the ``unfinished`` tasks, and any id left in the lease
        lists (a claim whose reply never arrived), to the head of their queues without
        counting an attempt; drop the leases and the registry entry. Returns how many
        tasks went back."""
        calls = [
            scripts.requeue(
                k,
                self._leases[q],
                self._id,
                [(c.id, c.token) for c in unfinished.get(q, ())],
                leaving=True,
            )
            for q, k in self._keys.items()
        ]
        broker = self._broker
        replies = await broker.run(lambda: broker.scripts(calls))
        prefix = broker.prefix
        unregister = [
            ("ZREM", workers_key(prefix), self._id),
            ("ZREM", lease_index_key(prefix), self._id),
            ("DEL", worker_key(prefix, self._id)),
        ]
        await broker.run(lambda: broker.scripts([], unregister))
        return sum(int(r) for r in replies)
