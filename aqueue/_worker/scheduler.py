"""The cron scheduler every worker runs (unless ``scheduler=False``).

Each scheduler sleeps until the next tick of any entry and then enqueues it through the
enqueue script, which atomically refuses a tick already enqueued (by any worker), so
schedulers need no leader election and never double-fire. At start a scheduler catches
up on ticks missed while every worker was down, as each entry's ``catch_up`` says.

A tick's task is prepared as ``Client.enqueue`` prepares one (``_producer``): the same
checks, encoding and options, its queue registered the same way, and a delayed task
announced on the schedule channel so that every worker's forwarder wakes in time for
it. What ``Inspector.cron_entries`` shows is read by ``_reads.read_cron_entries``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from .._codec import encode_value
from .._cron import CronSpec
from .._producer import Producer, now_ms
from .._redis import scripts
from .._redis.broker import Broker
from .._redis.keys import queue_keys
from .._task import DEFAULT_QUEUE, from_ms
from ..errors import BrokerUnavailable
from .outage import Outage

log = logging.getLogger("aqueue.scheduler")

# Recent cron enqueues kept per queue (all entries of the queue together).
HISTORY = 1000


def queue_of(entry: CronSpec) -> str:
    queue = entry.options.get("queue")
    if queue is None and not isinstance(entry.task, str):
        queue = entry.task.options.get("queue")
    return str(queue or DEFAULT_QUEUE)


class Scheduler:
    """Fires ``entries`` (a Mux's ``cron_entries``) through ``broker``, for ever.

    ``outage`` is the worker's: a step that cannot reach the server reports to it and
    waits its backoff, then tries again. Tasks are prepared with the entry's options,
    then its handler's (there are no Client defaults here).
    """

    def __init__(self, broker: Broker, entries: Sequence[CronSpec], outage: Outage) -> None:
        self._broker = broker
        self._entries = entries
        self._outage = outage
        self._producer = Producer(broker.prefix)

    async def run(self) -> None:
        if not self._entries:
            return
        await self._retrying(self._register)
        await self._retrying(self._catch_up)
        upcoming = {e.name: e.next_after(now_ms()) for e in self._entries}
        while True:
            tick = min(upcoming.values())
            await anyio.sleep(max(0.0, tick / 1000 - time.time()))
            for entry in self._entries:
                if upcoming[entry.name] == tick:
                    await self._retrying(functools.partial(self.fire, entry, tick))
                    upcoming[entry.name] = entry.next_after(tick)

    async def _retrying(self, step: Callable[[], Awaitable[Any]]) -> None:
        while True:
            try:
                await step()
            except BrokerUnavailable as exc:
                await self._outage.failed(exc)
            else:
                self._outage.ok()
                return

    async def _register(self) -> None:
        """Publish each entry's definition, for ``Inspector.cron_entries``, and register
        the entries' queues (through the producer: its first ticks need not again)."""
        b = self._broker
        queues = [queue_of(e) for e in self._entries]
        commands, new = self._producer.registrations(dict.fromkeys(queues))
        for e, q in zip(self._entries, queues, strict=True):
            commands.append(
                ("HSET", queue_keys(b.prefix, q).crondef, e.name, encode_value(e.definition()))
            )
        await b.run(lambda: b.scripts([], commands))
        self._producer.registered(new)

    async def _catch_up(self) -> None:
        b = self._broker
        now = now_ms()
        reads = [("HGET", queue_keys(b.prefix, queue_of(e)).cron, e.name) for e in self._entries]
        lasts = await b.run(lambda: b.scripts([], reads))
        for e, last in zip(self._entries, lasts, strict=True):
            if last is None or e.catch_up == "skip":
                continue  # never seen: it starts at its next tick
            limit = 1 if e.catch_up == "latest" else e.catch_up_max
            for tick in e.ticks_between(int(last), now, limit):
                await self.fire(e, tick, catching_up=True)

    async def fire(self, e: CronSpec, tick: int, catching_up: bool = False) -> bool:
        """Enqueue ``e``'s task for ``tick`` unless some scheduler already did; False
        if one did."""
        b, producer = self._broker, self._producer
        p = producer.prepare(e.task, e.payload, e.options, now_ms())
        call, extra, new = producer.cron(p, e.name, tick, HISTORY)
        reply = (await b.run(lambda: b.scripts([call], extra)))[0]
        producer.registered(new)
        if reply == scripts.SKIPPED:
            return False
        outcome = reply[0]
        what = "a missed tick" if catching_up else "tick"
        if outcome == scripts.WRITTEN:
            if p.opts.due:
                notice = producer.notice(p.opts.queue, p.opts.due)
                await b.run(lambda: b.scripts([], [notice]))
            log.info(
                "cron %s: enqueued task %s for %s %s", e.name, p.opts.task_id, what, from_ms(tick)
            )
        else:
            kind, detail = scripts.parse_refused(outcome)
            log.warning("cron %s: %s %s refused: %s %s", e.name, what, from_ms(tick), kind, detail)
        return True
