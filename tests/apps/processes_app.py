"""An app for tests/test_processes.py: ``aqueue worker tests.apps.processes_app:mux -p N``.

Its handler appends ``"<value>|<pid>"`` to the list ``key`` on the server named in the
payload, so a test can see which worker process ran each task; ``hold`` keeps the
handler busy that long first.
"""

from __future__ import annotations

import os

import anyio
import msgspec
import redis.asyncio as aioredis

import aqueue


class Mark(msgspec.Struct):
    url: str
    key: str
    value: str
    hold: float = 0.0


mux = aqueue.Mux()


@mux.task("proc:mark")
async def mark(ctx: aqueue.Context, m: Mark) -> None:
    if m.hold:
        await anyio.sleep(m.hold)
    r = aioredis.Redis.from_url(m.url)
    try:
        await r.rpush(m.key, f"{m.value}|{os.getpid()}")
    finally:
        await r.aclose()
