"""Housekeeping of kept data: completed tasks past their retention, the archive's age
and size, expired unique locks (``janitor.lua``, bounded per call); and flow control's
(``recount.lua``): slots counted again from the active tasks, old rate windows dropped.
The reaper runs it after each of its passes, on ``SLICE`` queues at most, in turn:
every queue at each pass for a worker serving that many or fewer, and an idle worker's
cost that does not grow with the number of queues past that (a queue is then looked at
every ``queues / SLICE`` passes). The scripts are idempotent, so every worker may."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping

from .._redis import scripts
from .._redis.broker import Broker
from .._redis.keys import QueueKeys
from .turns import Turns

log = logging.getLogger("aqueue.worker")

# Deletions of each kind per queue and janitor call.
JANITOR_BATCH = 500
# The most queues one sweep looks at.
SLICE = 50


class Janitor:
    """Bounded housekeeping calls of ``janitor.lua`` for each queue, until nothing is left."""

    def __init__(
        self,
        broker: Broker,
        keys: Mapping[str, QueueKeys],
        *,
        max_archived: int,
        archive_ttl: float,
    ) -> None:
        self._broker = broker
        self._keys = keys
        self._max_archived = max_archived
        self._archive_ttl_ms = int(archive_ttl * 1000)
        self._names = list(keys)
        self._turns = Turns()

    async def sweep(self) -> int:
        """Delete what is due, in bounded calls until nothing is left to do; returns
        how many tasks were deleted."""
        broker = self._broker
        total = 0
        names = self._turns.take(self._names, SLICE)
        queues = [self._keys[q] for q in names]
        calls = [scripts.recount(k, JANITOR_BATCH) for k in queues]
        recounts = await broker.run(functools.partial(broker.scripts, calls))
        for name, raw in zip(names, recounts, strict=True):
            fixed = scripts.parse_recount(raw).fixed
            if fixed:
                log.warning(
                    "queue %s: the slots taken of %d limit(s) were miscounted (the server "
                    "lost recent writes?); counted again from the running tasks",
                    name, fixed,
                )  # fmt: skip
        while queues:
            now = int(time.time() * 1000)
            calls = [
                scripts.janitor(k, now, self._max_archived, self._archive_ttl_ms, JANITOR_BATCH)
                for k in queues
            ]
            replies = [
                scripts.parse_janitor(r)
                for r in await broker.run(functools.partial(broker.scripts, calls))
            ]
            total += sum(r.deleted for r in replies)
            queues = [k for k, r in zip(queues, replies, strict=True) if r.more]
        return total
