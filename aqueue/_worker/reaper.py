"""The reaper: returns the tasks of workers whose lease expired.

Every worker runs one for the queues it serves, at least every ``min(lease_ttl, 5)``
seconds, with jitter so that many workers spread out. ``reap.lua`` re-checks each
lease inside the script, so any number of reapers can race and each task is recovered
once (docs/guarantees.md, "Reaper"). Each pass also runs the janitor.

A pass first reads the lease index (``lease_index_key``: every worker's lease expiry,
kept a minute past it): one command that says whether a worker died. When one did, the
pass looks at the leases of every queue (once per dead worker); otherwise at
``LOOK_EACH_PASS`` queues in turn, a safety net for a lease the index does not know
(a worker of an older release, a write lost in a failover). So an idle worker's cost
does not grow with the number of queues it serves, and a dead worker's tasks come back
within one pass of its lease's end.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping

import anyio

from .._flows import End
from .._redis import scripts
from .._redis.broker import Broker
from .._redis.keys import LEASE_INDEX_GRACE, QueueKeys, done_channel, lease_index_key
from .._redis.scripts import Call
from ..errors import BrokerUnavailable
from .janitor import Janitor
from .outage import Outage
from .runner import today
from .turns import Turns

log = logging.getLogger("aqueue.worker")

# Queues whose leases a pass looks at when no worker died, in turn.
LOOK_EACH_PASS = 50


class Reaper:
    """Finds expired leases of the queues this worker serves and recovers their tasks;
    runs the janitor after each pass."""

    def __init__(
        self,
        broker: Broker,
        keys: Mapping[str, QueueKeys],
        *,
        lease_ttl: float,
        janitor: Janitor,
        outage: Outage,
        flow_ends: Callable[[Mapping[str, list[End]]], None] = lambda ends: None,
    ) -> None:
        self._broker = broker
        self._keys = keys
        self._interval = min(lease_ttl, 5.0)
        self._janitor = janitor
        self._outage = outage
        # Wakes the flow pump for the queues whose outboxes an archived step went to.
        self._flow_ends = flow_ends
        self._names = list(keys)
        self._turns = Turns()
        # Dead workers (in the lease index) whose leases a full pass looked at.
        self._handled: set[str] = set()

    async def run(self) -> None:
        while True:
            try:
                await self.reap()
                await self._janitor.sweep()
                self._outage.ok()
            except BrokerUnavailable as exc:
                await self._outage.failed(exc, sleep=0)
            # Jitter spreads the reapers of many workers over the interval.
            await anyio.sleep(self._interval * random.uniform(0.5, 1.0))

    async def _to_look_at(self, now: int) -> list[str]:
        """Every queue when the lease index names a dead worker not looked for yet;
        else the next few in turn."""
        broker = self._broker
        index = lease_index_key(broker.prefix)
        commands = [
            ("ZRANGEBYSCORE", index, "-inf", now),
            ("ZREMRANGEBYSCORE", index, "-inf", now - LEASE_INDEX_GRACE),
        ]
        dead_raw, _ = await broker.run(lambda: broker.scripts([], commands))
        dead = {x.decode() if isinstance(x, bytes) else str(x) for x in dead_raw}
        fresh = dead - self._handled
        self._handled = dead
        if fresh:
            return self._names
        return self._turns.take(self._names, LOOK_EACH_PASS)

    async def reap(self) -> tuple[int, int]:
        """One pass; returns how many tasks were recovered and how many of them were
        archived."""
        broker = self._broker
        now = int(time.time() * 1000)
        names = await self._to_look_at(now)
        ranges = [("ZRANGEBYSCORE", self._keys[q].leases, "-inf", now) for q in names]
        expired = await broker.run(lambda: broker.scripts([], ranges))
        calls: list[Call] = []
        reaped: list[str] = []
        for q, wids in zip(names, expired, strict=True):
            k = self._keys[q]
            if not wids:
                continue
            reaped.append(q)
            ids = [x.decode() for x in wids]
            calls.append(scripts.reap(k, ids, now, today()))
            log.info("reaping expired lease(s) %s on queue %s", ids, q)
        if not calls:
            return (0, 0)
        replies = [scripts.parse_reap(r) for r in await broker.run(lambda: broker.scripts(calls))]
        recovered = sum(r.recovered for r in replies)
        archived = sum(r.archived for r in replies)
        notices = [
            ("PUBLISH", done_channel(broker.prefix, q), "archived|" + ",".join(r.archived_ids))
            for q, r in zip(reaped, replies, strict=True)
            if r.archived_ids
        ]
        if notices:
            await broker.run(lambda: broker.scripts([], notices))
        if archived:
            self._flow_ends({q: [] for q, r in zip(reaped, replies, strict=True) if r.archived})
        if recovered or archived:
            log.warning(
                "recovered %d task(s) of lost workers (%d archived: retries spent)",
                recovered,
                archived,
            )
        return (recovered, archived)
