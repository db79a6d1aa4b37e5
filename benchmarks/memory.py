"""Server memory per pending task: ``INFO memory`` ``used_memory`` before and after
enqueueing N no-op tasks, divided by N.

The baseline is a list of minimal msgpack job records (id, type, payload) pushed
with raw LPUSH: what a queue with no task state, no lookup by id and no unique locks
would store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aqueue

from .common import RAW_PENDING, Bench, Result
from .tasks import noop, raw_record

BATCH = 1000


async def _used_memory(b: Bench) -> int:
    async with b.redis() as r:
        info = await r.info("memory")
    return int(info["used_memory"])


async def _bytes_per_item(b: Bench, n: int, fill: Callable[[], Awaitable[None]]) -> float:
    await b.flush()
    before = await _used_memory(b)
    await fill()
    return (await _used_memory(b) - before) / n


async def server_memory(b: Bench) -> Result:
    n = b.n(50_000, minimum=500)
    async with aqueue.Client(b.url) as client, b.redis() as r:

        async def fill_aqueue() -> None:
            for lo in range(0, n, BATCH):
                await client.enqueue_many([aqueue.Job(noop) for _ in range(min(BATCH, n - lo))])

        async def fill_raw() -> None:
            for lo in range(0, n, BATCH):
                pipe = r.pipeline(transaction=False)
                for _ in range(min(BATCH, n - lo)):
                    pipe.lpush(RAW_PENDING, raw_record("bench:noop"))
                await pipe.execute()

        # Connect and load the scripts before the first reading.
        await client.enqueue_many([aqueue.Job(noop)])
        await r.ping()
        ours = await _bytes_per_item(b, n, fill_aqueue)
        raw = await _bytes_per_item(b, n, fill_raw)
    return Result(
        "server_memory",
        n,
        "bytes/task",
        ours,
        raw,
        "raw LPUSH of a msgpack {id, type, payload}",
        "lower",
        extra={"total_mb": ours * n / 1e6},
    )
