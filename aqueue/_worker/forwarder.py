"""The forwarder: moves due ``scheduled`` and ``retry`` tasks to ``pending``.

It sleeps until the next due time it knows of, at most ``FORWARD_MAX_SLEEP``. Anyone
who learns of an earlier one wakes it: the outcome writer after a retry, the cancel
listener for a delayed task a client wrote. ``forward.lua`` is idempotent, so every
worker runs a forwarder.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping

import anyio

from .._redis import scripts
from .._redis.broker import Broker
from .._redis.keys import QueueKeys
from ..errors import BrokerUnavailable
from .outage import Outage

# Due tasks moved per queue and forwarder call; a larger backlog takes several calls.
FORWARD_BATCH = 1000
# Upper bound on the forwarder's sleep. Delayed tasks written by clients wake it through
# pub/sub; this only bounds the delay for one whose message was missed (a reconnect).
FORWARD_MAX_SLEEP = 5.0


class Forwarder:
    """Moves due delayed and retry tasks to ``pending``; ``wake(due)`` shortens its sleep
    when someone learns of an earlier due time."""

    def __init__(self, broker: Broker, keys: Mapping[str, QueueKeys], outage: Outage) -> None:
        self._broker = broker
        self._keys = keys
        self._outage = outage
        self._wake_at = math.inf  # time.time() of the next planned pass
        self._event: anyio.Event | None = None

    def wake(self, due_ms: int) -> None:
        """Make the forwarder run no later than ``due_ms``."""
        if due_ms / 1000 < self._wake_at and self._event is not None:
            self._event.set()

    async def run(self) -> None:
        broker = self._broker
        while True:
            # Any wake-up from here on interrupts the coming sleep: one that arrives
            # while the script runs may be for a task the script did not see.
            self._event = anyio.Event()
            self._wake_at = math.inf
            now = int(time.time() * 1000)
            calls = [scripts.forward(k, now, FORWARD_BATCH) for k in self._keys.values()]
            try:
                replies = await broker.run(functools.partial(broker.scripts, calls))
            except BrokerUnavailable as exc:
                await self._outage.failed(exc)
                continue
            self._outage.ok()
            forwarded = [scripts.parse_forward(r) for r in replies]
            if sum(r.moved for r in forwarded) >= FORWARD_BATCH:
                continue  # more are due right now
            nexts = [r.next_ms for r in forwarded if r.next_ms is not None]
            wake = time.time() + FORWARD_MAX_SLEEP
            if nexts:
                wake = min(wake, min(nexts) / 1000)
            self._wake_at = wake
            with anyio.move_on_after(max(0.0, wake - time.time())):
                await self._event.wait()
