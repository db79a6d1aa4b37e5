"""The runners: one long-lived processor loop per slot.

The dispatcher ``put``s each claimed task into the ``Handoff``; a loop that is idle
takes it at once, else it waits in line for the next loop to finish its task. Each
attempt is run by the ``Runner`` (no I/O), and its outcome handed to the outcome
writer. Spawning a task per handler would cost more than a no-op handler itself.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .._codec import encode_value
from .._redis.broker import Broker
from .._redis.keys import QueueKeys, done_channel
from .runner import Claimed, Outcome, Runner


class Handoff:
    """Claimed tasks on their way to the processor loops."""

    __slots__ = ("_closed", "_idle", "_ready")

    def __init__(self) -> None:
        self._ready: deque[Claimed] = deque()  # claimed, no loop free to take them yet
        self._idle: deque[asyncio.Future[Claimed | None]] = deque()  # loops waiting
        self._closed = False

    def put(self, c: Claimed) -> None:
        idle = self._idle
        while idle:
            loop = idle.popleft()
            if not loop.done():
                loop.set_result(c)
                return
        self._ready.append(c)

    def next(self) -> Claimed | None:
        """The next task waiting, if one is."""
        ready = self._ready
        return ready.popleft() if ready else None

    def wait(self) -> asyncio.Future[Claimed | None]:
        """A future for the next task put, or None once closed."""
        future: asyncio.Future[Claimed | None] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_result(None)
        else:
            self._idle.append(future)
        return future

    def close(self) -> None:
        """Let the loops end once nothing is left to run."""
        self._closed = True
        while self._idle:
            loop = self._idle.popleft()
            if not loop.done():
                loop.set_result(None)


class Processor:
    """``run()`` is started once per slot; every loop shares this object."""

    def __init__(
        self,
        handoff: Handoff,
        runner: Runner,
        broker: Broker,
        keys: Mapping[str, QueueKeys],
        record: Callable[[Claimed, Outcome], Awaitable[None]],
    ) -> None:
        self._handoff = handoff
        self._runner = runner
        self._broker = broker
        self._keys = keys
        self._record = record

    async def run(self) -> None:
        handoff = self._handoff
        while True:
            c = handoff.next()
            if c is None:
                c = await handoff.wait()
                if c is None:
                    return
            await self._process(c)

    async def _process(self, c: Claimed) -> None:
        broker = self._broker
        key, queue, task_id = self._keys[c.queue].progress, c.queue, c.id

        # The sink captures the task's names, not the task itself: the task holds the
        # Context that holds the sink, and a cycle would keep every finished task in
        # memory until the garbage collector's next full pass (megabytes under load).
        async def progress(value: Any) -> None:
            data = encode_value(value)
            channel = done_channel(broker.prefix, queue)
            commands = [("HSET", key, task_id, data), ("PUBLISH", channel, f"progress|{task_id}")]
            await broker.run(lambda: broker.scripts([], commands))

        outcome = await self._runner.run(c, progress)
        c.ctx = c.scope = None  # the attempt is over: nothing can cancel it now
        await self._record(c, outcome)
