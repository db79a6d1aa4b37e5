"""The soak's producers: several concurrent callers of one ``Client`` (so automatic
pipelining is under the faults too), enqueuing every kind of work at random.

A task counts as enqueued when its ``enqueue`` returned; it is then recorded on the
record server for the oracle. A call that raised ``BrokerUnavailable`` (the server was
restarting) may or may not have written its task: it is counted, not recorded, and the
oracle's server-wide checks still cover it if it was written.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter

import anyio
import redis.asyncio as aioredis

import aqueue
from aqueue._flow import Step as Handle

from .app import Step, Tenant, Work, rated, step, tenant, work
from .record import Enqueued, write_enqueued

RETENTION = 7200  # every result is kept past the soak: the oracle counts completions
TENANTS = ("acme", "globex", "initech")

# kind -> weight
KINDS = {
    "plain": 8,
    "slow": 2,
    "delayed": 3,
    "unique": 2,
    "rated": 2,
    "tenant": 2,
    "flow": 1,
}

# A flow's shape: step -> the steps it runs after, in ``after`` order.
SHAPES: list[dict[str, list[str]]] = [
    {"a": [], "b": ["a"], "c": ["b"]},
    {"a": [], "b": ["a"], "c": ["a"], "d": ["a"], "e": ["b", "c", "d"]},
    {"a": [], "b": ["a"], "c": ["a"], "d": ["c", "b"]},
    {"a": [], "b": [], "c": ["a", "b"]},
]


class Producers:
    def __init__(self, client: aqueue.Client, record: aioredis.Redis, seed: int) -> None:
        self.client = client
        self.record = record
        self.rng = random.Random(seed ^ 0x5EED)
        self.counts: Counter[str] = Counter()

    async def run(self, seconds: float, rate: float, callers: int = 4) -> None:
        """``callers`` loops, together about ``rate`` enqueues a second, for ``seconds``."""
        end = time.monotonic() + seconds
        async with anyio.create_task_group() as tg:
            for _ in range(callers):
                tg.start_soon(self._caller, end, callers / rate)

    async def _caller(self, end: float, every: float) -> None:
        kinds, weights = list(KINDS), list(KINDS.values())
        while time.monotonic() < end:
            kind = self.rng.choices(kinds, weights)[0]
            try:
                done = await self._one(kind)
            except aqueue.DuplicateTask:
                self.counts["unique refused (lock held)"] += 1
            except aqueue.BrokerUnavailable:
                self.counts["unknown (server unavailable)"] += 1
                await anyio.sleep(0.2)
            except aqueue.AqueueError as exc:
                if "server is full" not in str(exc):
                    raise
                self.counts["refused (server full)"] += 1
            else:
                await write_enqueued(self.record, [done])
                self.counts[kind] += 1
            await anyio.sleep(self.rng.expovariate(1 / every))

    async def _one(self, kind: str) -> Enqueued:
        rng, c = self.rng, self.client
        now = time.time()
        if kind == "flow":
            return await self._flow()
        if kind == "rated":
            info = await c.enqueue(rated, Work(rng.randint(1, 20)), retention=RETENTION)
        elif kind == "tenant":
            t = rng.choice(TENANTS)
            info = await c.enqueue(tenant, Tenant(t, rng.randint(100, 600)), retention=RETENTION)
            return Enqueued(info.id, info.queue, kind, now, key=t)
        elif kind == "unique":
            w = Work(10, f"u{rng.randrange(20)}")
            info = await c.enqueue(work, w, unique=30, retention=RETENTION)
        elif kind == "delayed":
            w = Work(rng.randint(1, 50))
            info = await c.enqueue(work, w, process_in=rng.uniform(0.2, 4.0), retention=RETENTION)
        else:
            ms = rng.randint(500, 3000) if kind == "slow" else rng.randint(1, 50)
            info = await c.enqueue(work, Work(ms), retention=RETENTION)
        return Enqueued(info.id, info.queue, kind, now)

    async def _flow(self) -> Enqueued:
        shape = self.rng.choice(SHAPES)
        flow_id = uuid.uuid4().hex
        flow = aqueue.Flow()
        handles: dict[str, Handle] = {}
        for name, after in shape.items():
            job = aqueue.Job(step, Step(flow_id, name, self.rng.randint(1, 100)))
            handles[name] = flow.add(job, after=[handles[a] for a in after] or None)
        info = await self.client.enqueue_flow(flow, flow_id=flow_id, retention=RETENTION)
        return Enqueued(info.id, "flows", "flow", time.time(), key=flow_id, deps=shape)
