"""An app for the command-line tests: ``aqueue worker tests.apps.cli_app:mux``.

Its one handler reports to the test through the server named in the payload: it
appends ``value`` to the list ``key`` when done, and first to ``key:started`` when it
is asked to ``hold`` (stay busy) for a while, so a test can signal the worker while the
handler is mid-run.
"""

from __future__ import annotations

import anyio
import msgspec
import redis.asyncio as aioredis

import aqueue


class Note(msgspec.Struct):
    url: str
    key: str
    value: str
    hold: float = 0.0


mux = aqueue.Mux()


@mux.task("cli:note")
async def note(ctx: aqueue.Context, n: Note) -> None:
    if n.hold:
        await _push(n.url, n.key + ":started", n.value)
        await anyio.sleep(n.hold)
    await _push(n.url, n.key, n.value)


async def _push(url: str, key: str, value: str) -> None:
    r = aioredis.Redis.from_url(url)
    try:
        await r.rpush(key, value)
    finally:
        await r.aclose()


# A Worker as the CLI target: the tests check that its settings are used and that the
# flags given explicitly win. Its URL is never reached: every test gives --url.
worker = aqueue.Worker(
    mux,
    "redis://127.0.0.1:1/0",
    concurrency=3,
    queues={"from-worker": 1},
    shutdown_timeout=0.2,
)

# Neither a Mux nor a Worker: the CLI must refuse it as a usage error.
settings = {"concurrency": 3}
