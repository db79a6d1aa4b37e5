"""The reaper: returns the tasks of workers whose lease expired.

Every worker runs one for the queues it serves, at least every ``min(lease_ttl, 5)``
seconds, with jitter so that many workers spread out. ``reap.lua`` re-checks each
lease inside the script, so any number of reapers can race and each task is recovered
once (docs/guarantees.md, "Reaper"). Each pass also runs the janitor.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping

import anyio

from .._redis import scripts
from .._redis.broker import Broker
from .._redis.keys import QueueKeys, done_channel
from .._redis.scripts import Call
from ..errors import BrokerUnavailable
from .janitor import Janitor
from .outage import Outage
from .runner import today

log = logging.getLogger("aqueue.worker")


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
    ) -> None:
        self._broker = broker
        self._keys = keys
        self._interval = min(lease_ttl, 5.0)
        self._janitor = janitor
        self._outage = outage

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

    async def reap(self) -> tuple[int, int]:
        """One pass; returns how many tasks were recovered and how many of them were
        archived."""
        broker = self._broker
        now = int(time.time() * 1000)
        ranges = [("ZRANGEBYSCORE", k.leases, "-inf", now) for k in self._keys.values()]
        expired = await broker.run(lambda: broker.scripts([], ranges))
        calls: list[Call] = []
        reaped: list[str] = []
        for (q, k), wids in zip(self._keys.items(), expired, strict=True):
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
        if recovered or archived:
            log.warning(
                "recovered %d task(s) of lost workers (%d archived: retries spent)",
                recovered,
                archived,
            )
        return (recovered, archived)
