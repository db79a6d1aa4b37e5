"""The cron scheduler every worker runs (unless ``scheduler=False``).

Each scheduler sleeps until the next tick of any entry and then enqueues it through the
enqueue script, which atomically refuses a tick already enqueued (by any worker), so
schedulers need no leader election and never double-fire. At start a scheduler catches
up on ticks missed while every worker was down, as each entry's ``catch_up`` says.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING, Any

import anyio

from .._client import Client, enqueue_keys
from .._codec import decode_value, encode_value
from .._cron import CronEntry, CronRun, CronSpec
from .._redis.broker import SCRIPTS, Broker, Call
from .._redis.keys import queue_keys, queues_key
from .._task import DEFAULT_QUEUE, from_ms
from ..errors import BrokerUnavailable

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("aqueue.scheduler")

# Recent cron enqueues kept per queue (all entries of the queue together).
HISTORY = 1000


def queue_of(entry: CronSpec) -> str:
    queue = entry.options.get("queue")
    if queue is None and not isinstance(entry.task, str):
        queue = entry.task.options.get("queue")
    return str(queue or DEFAULT_QUEUE)


class Scheduler:
    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.broker = worker.broker
        self.entries = worker.mux.cron_entries
        # Shares the worker's connections; used for validation and encoding only.
        self.client = Client(
            self.broker.redis, timeout=self.broker.timeout, prefix=self.broker.prefix
        )

    async def run(self) -> None:
        if not self.entries:
            return
        await self._retrying(self._register)
        await self._retrying(self._catch_up)
        upcoming = {e.name: e.next_after(int(time.time() * 1000)) for e in self.entries}
        while True:
            tick = min(upcoming.values())
            await anyio.sleep(max(0.0, tick / 1000 - time.time()))
            for entry in self.entries:
                if upcoming[entry.name] == tick:
                    await self._retrying(functools.partial(self.fire, entry, tick))
                    upcoming[entry.name] = entry.next_after(tick)

    async def _retrying(self, step: Any) -> None:
        while True:
            try:
                await step()
            except BrokerUnavailable as exc:
                await self.w._outage.failed(exc)
            else:
                self.w._outage.ok()
                return

    async def _register(self) -> None:
        """Publish each entry's definition, for ``Inspector.cron_entries``."""
        b = self.broker
        commands: list[tuple[Any, ...]] = []
        for e in self.entries:
            q = queue_of(e)
            commands.append(("SADD", queues_key(b.prefix), q))
            commands.append(
                ("HSET", queue_keys(b.prefix, q).crondef, e.name, encode_value(e.definition()))
            )
        await b.run(lambda: b.scripts([], commands))

    async def _catch_up(self) -> None:
        b = self.broker
        now = int(time.time() * 1000)
        lasts = await b.run(
            lambda: b.scripts(
                [], [("HGET", queue_keys(b.prefix, queue_of(e)).cron, e.name) for e in self.entries]
            )
        )
        for e, last in zip(self.entries, lasts, strict=True):
            if last is None or e.catch_up == "skip":
                continue  # never seen: it starts at its next tick
            limit = 1 if e.catch_up == "latest" else e.catch_up_max
            for tick in e.ticks_between(int(last), now, limit):
                await self.fire(e, tick, catching_up=True)

    async def fire(self, e: CronSpec, tick: int, catching_up: bool = False) -> bool:
        """Enqueue ``e``'s task for ``tick`` unless some scheduler already did."""
        b = self.broker
        now = int(time.time() * 1000)
        prepared = self.client._prepare(e.task, e.payload, e.options, now)
        k = queue_keys(b.prefix, prepared.opts.queue)
        task = prepared.args if len(prepared.args) == 5 else [*prepared.args, "", 0]
        args = [now, 5, e.name, tick, HISTORY, *task]
        call: Call = (SCRIPTS.enqueue, enqueue_keys(k, cron=True), args)
        (reply,) = await b.run(lambda: b.scripts([call]))
        if reply == b"skip":
            return False
        outcome = reply[0]
        what = "a missed tick" if catching_up else "tick"
        if outcome == b"ok":
            log.info(
                "cron %s: enqueued task %s for %s %s",
                e.name,
                prepared.opts.task_id,
                what,
                from_ms(tick),
            )
        else:
            log.warning("cron %s: %s %s refused: %s", e.name, what, from_ms(tick), outcome)
        return True


async def read_cron_entries(broker: Broker) -> list[CronEntry]:
    """Every cron entry any worker has registered, once each, with next and last runs
    and recent history (newest first)."""
    b = broker
    members = await b.run(lambda: b.redis.smembers(queues_key(b.prefix)))
    names = sorted(n.decode() if isinstance(n, bytes) else n for n in members)
    commands: list[tuple[Any, ...]] = []
    for q in names:
        k = queue_keys(b.prefix, q)
        commands += [("HGETALL", k.crondef), ("HGETALL", k.cron), ("LRANGE", k.cronlog, 0, -1)]
    replies = await b.run(lambda: b.scripts([], commands)) if commands else []
    now = int(time.time() * 1000)
    out: list[CronEntry] = []
    for i, q in enumerate(names):
        defs, lasts, log_items = replies[3 * i : 3 * i + 3]
        history: dict[str, list[CronRun]] = {}
        for item in log_items:
            name, tick, task_id = item.decode().rsplit("|", 2)
            history.setdefault(name, []).append(CronRun(tick=from_ms(int(tick)), task_id=task_id))  # type: ignore[arg-type]
        for raw_name, raw_def in sorted(defs.items()):
            name = raw_name.decode()
            d = decode_value(raw_def)
            spec = CronSpec(name, d["spec"], d["task"], None, {}, tz=d["tz"])
            last = lasts.get(raw_name)
            out.append(
                CronEntry(
                    name=name,
                    spec=d["spec"],
                    tz=d["tz"],
                    task=d["task"],
                    queue=q,
                    next_run=from_ms(spec.next_after(now)),
                    last_run=from_ms(int(last)) if last is not None else None,
                    history=history.get(name, []),
                )
            )
    return out
