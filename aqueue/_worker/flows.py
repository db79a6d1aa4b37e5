"""The flow pump: records in their workflows the ends of the steps this worker's queues
report (their outboxes), releases the steps those free, and finishes what a crashed
worker or client left half done (``_flows``, docs/workflows.md).

The outcome writer wakes it after writing the end of a step, so a step's successors
start within a few round trips of its ack; a sweep every ``SWEEP`` seconds finds ends
and releases nobody is handling (their worker died between two writes).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import anyio

from .. import _flowreads, _flows
from .._flows import End
from .._redis.broker import Broker
from .._redis.keys import queue_keys
from ..errors import BrokerUnavailable
from .outage import Outage
from .turns import Turns

# Seconds between sweeps of the outboxes and of the flows due, when nothing wakes it.
SWEEP = 5.0
# Sweeps between two prunings of the list of flows (of flows past their retention).
PRUNE_EVERY = 15
# Outboxes a sweep looks at, in turn (an idle worker's cost does not grow with the
# number of queues it serves; the ends reported to this worker are handled at once).
LOOK_EACH_SWEEP = 50


class FlowPump:
    """Drains the step ends of ``queues`` into their flows; ``wake()`` after an ack or
    failure of a step."""

    def __init__(self, broker: Broker, queues: Collection[str], outage: Outage) -> None:
        self._broker = broker
        self._queues = list(queues)
        self._outage = outage
        self._event = anyio.Event()
        self._sweeps = 0
        self._ends: dict[str, list[End]] = {}
        self._drain_now: set[str] = set()
        self._turns = Turns()

    def ended(self, ends: Mapping[str, list[End]]) -> None:
        """Steps ended (their acks are written): record them now; a queue with no ends
        given (a failure, a reaped step) has its outbox drained now."""
        for queue, items in ends.items():
            if items:
                self._ends.setdefault(queue, []).extend(items)
            else:
                self._drain_now.add(queue)
        self._event.set()

    async def run(self) -> None:
        while True:
            if not self._ends and not self._drain_now:
                with anyio.move_on_after(SWEEP):
                    await self._event.wait()
            woken = self._event.is_set()
            self._event = anyio.Event()
            ends, self._ends = self._ends, {}
            drain, self._drain_now = self._drain_now, set()
            try:
                # Straight from the acks: their results are at hand, no outbox read.
                for queue, items in ends.items():
                    await _flows.record_ends(self._broker, queue, items)
                for queue in drain:
                    while await _flows.finish_steps(self._broker, queue):
                        pass
                if ends or drain:
                    continue
                await self._drain()
                if not woken:
                    await _flows.sweep_due(self._broker)
                    self._sweeps += 1
                    if self._sweeps % PRUNE_EVERY == 0:
                        await _flowreads.prune(self._broker)
            except BrokerUnavailable as exc:
                await self._outage.failed(exc)
                continue
            self._outage.ok()

    async def _drain(self) -> None:
        """The outboxes of ``LOOK_EACH_SWEEP`` queues in turn, until empty (one length
        read for all, then only those with something in them)."""
        b = self._broker
        names = self._turns.take(self._queues, LOOK_EACH_SWEEP)
        keys = [queue_keys(b.prefix, q).outbox for q in names]
        sizes = await b.run(lambda: b.scripts([], [("LLEN", k) for k in keys]))
        for queue, size in zip(names, sizes, strict=True):
            if int(size):
                while await _flows.finish_steps(b, queue):
                    pass
