"""The handlers and payloads the benchmarks enqueue and run.

Imported both by the benchmark process (to enqueue through the handlers) and by the
worker child process (to serve them).
"""

from __future__ import annotations

import time
import uuid

import anyio
import msgspec

import aqueue


class Item(msgspec.Struct):
    """A small typed payload, as a typical task would carry."""

    n: int


class Stamp(msgspec.Struct):
    """When the producer called ``enqueue`` (``time.time()``)."""

    t: float


class Seen:
    """The latencies (ms) ``stamp`` saw in this process; ``done`` is set at ``want``."""

    def __init__(self) -> None:
        self.ms: list[float] = []
        self.want = 0
        self.done: anyio.Event | None = None

    def expect(self, n: int) -> anyio.Event:
        self.want, self.done = n, anyio.Event()
        return self.done

    def add(self, ms: float) -> None:
        self.ms.append(ms)
        if self.done is not None and len(self.ms) >= self.want:
            self.done.set()


mux = aqueue.Mux()
seen = Seen()


@mux.task("bench:item")
async def item(ctx: aqueue.Context, payload: Item) -> None:
    """What the enqueue workloads write (never run)."""


@mux.task("bench:noop")
async def noop(ctx: aqueue.Context) -> None:
    """Does nothing: measures the framework alone."""


@mux.task("bench:sleep")
async def sleep(ctx: aqueue.Context) -> None:
    """Waits 10 ms, like a task that awaits a fast remote call."""
    await anyio.sleep(0.01)


@mux.task("bench:stamp")
async def stamp(ctx: aqueue.Context, payload: Stamp) -> None:
    """Records how long after its enqueue this handler started."""
    seen.add((time.time() - payload.t) * 1000)


def raw_record(task_type: str, payload: object = None) -> bytes:
    """What the hand-written baselines push: the least a job record needs."""
    return msgspec.msgpack.encode({"id": uuid.uuid4().hex, "type": task_type, "payload": payload})
