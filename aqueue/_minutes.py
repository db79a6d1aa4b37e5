"""The last hour of each queue, a minute at a time: what the dashboard's throughput and
queue-depth chart draws.

The server counts processed and failed attempts per day only (the ack scripts bump
``stats``); a counter per minute would cost every task another write. Instead, the
readers that look at the queues regularly record what they read: the dashboard on each
page view and poll (every 3 s while a page is open) and ``QueueCollector`` on each
refresh (``aqueue metrics``: every 5 s). Each queue keeps a ring of ``SLOTS`` samples
in one hash, ``<prefix>:{<queue>}:minutes``: field ``<Unix minute> % SLOTS``, value
``"<ms> <processed total> <failed total> <pending> <active>"``, the latest sample of
each minute winning; the hash expires ``TTL_MS`` after the last sample.

Attempts per minute are the change in the queue's processed (failed) total between a
minute's sample and the one before it, per minute elapsed between them. So the chart
measures only while some reader runs: a minute without a sample is a gap, never a zero;
a sample more than ``MAX_GAP_MS`` after the previous one gets no rate. Plain commands,
one round trip for all queues each way; a server that refuses the write (a read-only
replica) leaves the chart empty and nothing else changes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.exceptions as rexc

from ._redis.broker import Broker
from ._redis.keys import queue_keys
from ._task import QueueInfo
from .errors import AqueueError

log = logging.getLogger("aqueue.minutes")

SLOTS = 90  # an hour shown, and the half hour before it for the first minute's rate
TTL_MS = 2 * 3600 * 1000
MAX_GAP_MS = 5 * 60 * 1000
SPAN = 60  # minutes a chart shows


def minutes_key(prefix: str, queue: str) -> str:
    return queue_keys(prefix, queue).base + "minutes"


@dataclass(frozen=True, order=True)
class Sample:
    """One reading of a queue: when (Unix ms), its processed and failed totals, and how
    many tasks were pending and active."""

    at: int
    processed: int
    failed: int
    pending: int
    active: int

    def encode(self) -> str:
        return f"{self.at} {self.processed} {self.failed} {self.pending} {self.active}"

    @classmethod
    def decode(cls, value: bytes | str) -> Sample | None:
        text = value.decode() if isinstance(value, bytes) else value
        try:
            at, processed, failed, pending, active = (int(x) for x in text.split())
        except ValueError:  # written by another version: no sample
            return None
        return cls(at, processed, failed, pending, active)


@dataclass(frozen=True)
class Minute:
    """One minute of a queue (or of all queues, summed): attempts processed and failed
    per minute, averaged since the sample before (None: no rate known), and the tasks
    pending and active at the minute's sample (None: no sample)."""

    minute: int  # Unix time // 60
    processed: float | None = None
    failed: float | None = None
    pending: int | None = None
    active: int | None = None


async def record(broker: Broker, infos: Sequence[QueueInfo], now_ms: int | None = None) -> None:
    """Keep a sample of each queue read (best effort: never raises for the server)."""
    if not infos:
        return
    at = int(time.time() * 1000) if now_ms is None else now_ms
    slot = at // 60_000 % SLOTS
    commands: list[tuple[object, ...]] = []
    for info in infos:
        key = minutes_key(broker.prefix, info.queue)
        sample = Sample(at, info.processed_total, info.failed_total, info.pending, info.active)
        commands += [("HSET", key, slot, sample.encode()), ("PEXPIRE", key, TTL_MS)]
    try:
        await broker.run(lambda: broker.scripts([], commands))
    except (AqueueError, rexc.RedisError) as exc:
        log.debug("could not record the per-minute samples: %s", exc)


async def read(
    broker: Broker, queues: Sequence[str], now_ms: int | None = None
) -> dict[str, list[Minute]]:
    """The last ``SPAN`` minutes of each queue, oldest first."""
    if not queues:
        return {}
    commands = [("HVALS", minutes_key(broker.prefix, q)) for q in queues]
    replies = await broker.run(lambda: broker.scripts([], commands))
    at = int(time.time() * 1000) if now_ms is None else now_ms
    return {
        q: per_minute([s for s in map(Sample.decode, values) if s is not None], at)
        for q, values in zip(queues, replies, strict=True)
    }


def per_minute(samples: Sequence[Sample], now_ms: int) -> list[Minute]:
    """The ``SPAN`` minutes up to ``now_ms`` from one queue's samples (any order; a
    slot left from an earlier lap of the ring is ignored)."""
    now = now_ms // 60_000
    ordered = sorted(s for s in samples if now - SLOTS < s.at // 60_000 <= now)
    previous = dict(zip([s.at for s in ordered[1:]], ordered, strict=False))  # the one before
    by_minute = {s.at // 60_000: s for s in ordered}
    out = []
    for m in range(now - SPAN + 1, now + 1):
        sample = by_minute.get(m)
        if sample is None:
            out.append(Minute(m))
            continue
        s, p = sample, previous.get(sample.at)
        processed = failed = None
        if p is not None and 0 < s.at - p.at <= MAX_GAP_MS:
            per = 60_000 / (s.at - p.at)
            if s.processed >= p.processed and s.failed >= p.failed:  # else: counters reset
                processed = (s.processed - p.processed) * per
                failed = (s.failed - p.failed) * per
        out.append(Minute(m, processed, failed, s.pending, s.active))
    return out


def total(series: Sequence[Sequence[Minute]]) -> list[Minute]:
    """Several queues' minutes (the same minutes each) summed: a figure is known for a
    minute when it is known for at least one queue."""
    if not series:
        return []

    def add(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) if known else None

    out = []
    for minutes in zip(*series, strict=True):
        pending = add([m.pending for m in minutes])
        active = add([m.active for m in minutes])
        out.append(
            Minute(
                minutes[0].minute,
                add([m.processed for m in minutes]),
                add([m.failed for m in minutes]),
                None if pending is None else int(pending),
                None if active is None else int(active),
            )
        )
    return out
