"""What the soak's handlers record, on a server of its own that no fault touches.

Every handler start and finish is one ``Event``, appended to one list under a global
sequence number taken in the same script call: the sequence orders events across
processes exactly (a step's start must come after its dependencies' finishes), the
wall-clock ``t`` places them against the fault log (which pid was killed when).

The producers record each task whose ``enqueue`` returned as an ``Enqueued`` line: the
oracle's list of what must have run.
"""

from __future__ import annotations

import msgspec
import redis.asyncio as aioredis

EVENTS = "soak:events"
SEQ = "soak:seq"
ENQUEUED = "soak:enqueued"

# INCR and RPUSH in one call, so that no event is ever recorded without its number.
_APPEND = """
local n = redis.call('INCR', KEYS[1])
redis.call('RPUSH', KEYS[2], n .. '|' .. ARGV[1])
return n
"""


class Event(msgspec.Struct, frozen=True):
    kind: str  # "s" (a handler started) or "f" (it finished, about to return)
    id: str
    type: str
    pid: int
    t: float  # time.time() in the worker
    retry: int
    key: str = ""  # the limit key, or "<flow id>/<step>" for a workflow step
    inputs: list[str] = []  # a step's ctx.inputs, at its start
    seq: int = 0  # filled in when read back


class Enqueued(msgspec.Struct, frozen=True):
    id: str
    queue: str
    kind: str  # the producer's name for it: plain, slow, delayed, unique, rated, ...
    t: float
    key: str = ""  # limit key, or the flow id for kind "flow"
    # For a flow: step name -> the names it waits for (its structure, for the oracle).
    deps: dict[str, list[str]] = {}


_encode = msgspec.json.Encoder().encode


class Recorder:
    """The handlers' side: one per worker process."""

    def __init__(self, url: str) -> None:
        self._r = aioredis.Redis.from_url(url)
        self._append = self._r.register_script(_APPEND)

    async def event(self, e: Event) -> int:
        return int(await self._append(keys=[SEQ, EVENTS], args=[_encode(e)]))

    async def aclose(self) -> None:
        await self._r.aclose()


async def read_events(r: aioredis.Redis) -> list[Event]:
    out: list[Event] = []
    decode = msgspec.json.Decoder(Event).decode
    for raw in await r.lrange(EVENTS, 0, -1):
        seq, _, body = (raw if isinstance(raw, bytes) else raw.encode()).partition(b"|")
        out.append(msgspec.structs.replace(decode(body), seq=int(seq)))
    return out


async def read_enqueued(r: aioredis.Redis) -> list[Enqueued]:
    decode = msgspec.json.Decoder(Enqueued).decode
    return [decode(raw) for raw in await r.lrange(ENQUEUED, 0, -1)]


async def write_enqueued(r: aioredis.Redis, items: list[Enqueued]) -> None:
    if items:
        await r.rpush(ENQUEUED, *(_encode(e) for e in items))
