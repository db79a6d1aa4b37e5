"""The forwarder: moves due ``scheduled`` and ``retry`` tasks to ``pending``.

It knows, per queue, the next due time the server reported (``forward.lua`` returns
it) or someone told it of: the outcome writer after a retry, the listener for a delayed
task a client wrote (its notice names the queue). A pass forwards only the queues whose
due time came, and a few others in turn (``LOOK_EACH_PASS``): a notice missed during a
reconnect, or a task delayed by a worker that died, is found within a few passes, and
an idle worker's cost does not grow with the number of queues it serves. After a
reconnect of the listener, every queue is looked at once. It sleeps until the earliest
due time, at most ``FORWARD_MAX_SLEEP``. ``forward.lua`` is idempotent, so every
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
from .turns import Turns

# Due tasks moved per queue and forwarder call; a larger backlog takes several calls.
FORWARD_BATCH = 1000
# Upper bound on the forwarder's sleep. Delayed tasks written by clients wake it through
# pub/sub; this only bounds the delay for one whose message was missed (a reconnect).
FORWARD_MAX_SLEEP = 5.0
# Queues with no due time known looked at in each pass anyway, in turn.
LOOK_EACH_PASS = 50


class Forwarder:
    """Moves due delayed and retry tasks to ``pending``; ``wake(due, queue)`` shortens
    its sleep when someone learns of an earlier due time."""

    def __init__(self, broker: Broker, keys: Mapping[str, QueueKeys], outage: Outage) -> None:
        self._broker = broker
        self._keys = keys
        self._outage = outage
        self._wake_at = math.inf  # time.time() of the next planned pass
        self._event: anyio.Event | None = None
        # Per queue, the next due time known (ms); 0: look at once; inf: none known.
        self._next: dict[str, float] = dict.fromkeys(keys, 0.0)
        self._names = list(keys)
        self._turns = Turns()
        self._told: dict[str, float] = {}

    def wake(self, due_ms: int, queue: str | None = None) -> None:
        """Make the forwarder run no later than ``due_ms`` for ``queue`` (None: look
        at every queue then)."""
        for q in self._next if queue is None else [queue] if queue in self._next else []:
            self._next[q] = min(self._next[q], due_ms)
            # Told while a pass is in flight: that pass may not have seen the task.
            self._told[q] = min(self._told.get(q, math.inf), due_ms)
        if due_ms / 1000 < self._wake_at and self._event is not None:
            self._event.set()

    def _picked(self, now: int) -> list[str]:
        """The queues whose due time came, and the next few in turn."""
        due = [q for q, t in self._next.items() if t <= now]
        names = self._names
        if len(names) > len(due):
            chosen = set(due).union(self._turns.take(names, LOOK_EACH_PASS))
            return [q for q in names if q in chosen]
        return due

    async def run(self) -> None:
        broker = self._broker
        while True:
            # Any wake-up from here on interrupts the coming sleep: one that arrives
            # while the script runs may be for a task the script did not see.
            self._event = anyio.Event()
            self._wake_at = math.inf
            now = int(time.time() * 1000)
            queues = self._picked(now)
            self._told = {}
            calls = [scripts.forward(self._keys[q], now, FORWARD_BATCH) for q in queues]
            try:
                replies = await broker.run(functools.partial(broker.scripts, calls))
            except BrokerUnavailable as exc:
                await self._outage.failed(exc)
                continue
            self._outage.ok()
            forwarded = [scripts.parse_forward(r) for r in replies]
            more = False
            for q, r in zip(queues, forwarded, strict=True):
                self._next[q] = r.next_ms if r.next_ms is not None else math.inf
                if r.moved >= FORWARD_BATCH:
                    self._next[q] = 0.0  # more are due right now
                    more = True
            for q, due in self._told.items():
                self._next[q] = min(self._next[q], due)
            if more:
                continue
            wake = time.time() + FORWARD_MAX_SLEEP
            wake = min(wake, min(self._next.values(), default=math.inf) / 1000)
            self._wake_at = wake
            with anyio.move_on_after(max(0.0, wake - time.time())):
                await self._event.wait()
