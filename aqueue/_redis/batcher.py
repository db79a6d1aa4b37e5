"""Automatic pipelining: concurrent calls share their round trips.

A web app's request handlers each ``await client.enqueue(...)``: each call is one short
command and one round trip, and a thousand of them at once run at the rate of a
thousand round trips on as many pooled connections, a fifth of what the server takes
when the same commands are pipelined. So calls made in the same turn of the event loop
are written together, in one write on one connection, and each caller gets back
exactly its own replies, in order. The Broker batches the commands of its calls; the
Client batches concurrent ``enqueue`` calls further, into the script calls of
``enqueue_many`` (one per queue and 500 tasks).

Its rules:

- The first call of a turn goes out at once: a lone caller waits for nothing. The calls
  made later in the same turn wait for the turn's end, then go out as one batch (one
  that turns out to be alone goes as the first did, in its caller's task).
- A caller's replies are its own: the batch's replies are cut by each caller's count of
  commands (or its task), in the order the callers came. An error reply stays in its
  caller's place.
- A caller cancelled before its batch is written (its deadline, a cancel scope) is left
  out of it: nothing of its call is sent. Cancelled once its batch is written, it stops
  waiting; the batch reads its replies and drops them, never hands them to anyone else,
  and the connection stays in step.
- A connection that fails fails every call of the batch on it, and only those: each
  caller then does not know whether its commands ran, and says so (``Broker.run`` makes
  it ``BrokerUnavailable``).
- A batch has a deadline of its own (the broker's timeout): a server that stops
  answering fails the batch, its connection closed.

Blocking commands (BLPOP) and calls on a connection of their own never come here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import redis.exceptions as rexc

T = TypeVar("T")
R = TypeVar("R")
Command = Sequence[Any]  # a plain command: its name (upper case), then its arguments


class _Alone:
    """What a waiting call is told when it turns out to be its turn's only one."""


_ALONE = _Alone()


class Batcher(Generic[T, R]):
    """Calls of one event-loop turn: the first through ``alone`` at once, the others
    through one ``together`` call at the turn's end (its results in the items' order).
    A turn that ends with one call waiting sends it through ``alone`` too, from its
    caller's task: no batch task is made for one call."""

    def __init__(
        self,
        alone: Callable[[T], Awaitable[R]],
        together: Callable[[list[T]], Awaitable[list[R]]],
    ) -> None:
        self._alone = alone
        self._together = together
        self._open = False  # a call of this turn went out: the next ones wait for its end
        self._waiting: list[tuple[T, asyncio.Future[R | _Alone]]] = []
        self._flushes: set[asyncio.Task[None]] = set()
        # Batches sent (the tests and benchmarks read it: calls that shared a trip).
        self.batches = 0

    def call(self, item: T) -> Awaitable[R]:
        """``item``'s result, sent alone or with this turn's other calls. (Not a
        coroutine of its own: a lone call awaits ``alone`` directly.)"""
        if self._open:
            return self._wait(item)
        self._open = True
        asyncio.get_running_loop().call_soon(self._turn_ended)
        return self._alone(item)

    async def _wait(self, item: T) -> R:
        waiter: asyncio.Future[R | _Alone] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, waiter))
        # Cancelled while waiting, the future is cancelled too: the batch leaves it out,
        # or drops its result.
        result = await waiter
        if isinstance(result, _Alone):
            return await self._alone(item)
        return result

    def _turn_ended(self) -> None:
        self._open = False
        batch = [waiting for waiting in self._waiting if not waiting[1].done()]
        self._waiting = []
        if len(batch) == 1:
            batch[0][1].set_result(_ALONE)
        elif batch:
            flush = asyncio.get_running_loop().create_task(self._flush(batch))
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[T, asyncio.Future[R | _Alone]]]) -> None:
        self.batches += 1
        try:
            results = await self._together([item for item, _ in batch])
        except asyncio.CancelledError:
            _fail(batch, rexc.ConnectionError("connection closed by aqueue"))
            raise
        except Exception as exc:
            _fail(batch, exc)
            return
        for (_, waiter), result in zip(batch, results, strict=True):
            if not waiter.done():
                waiter.set_result(result)

    async def close(self) -> None:
        """Give up the batches in flight (their callers get a connection error)."""
        flushes = list(self._flushes)
        for flush in flushes:
            flush.cancel()
        await asyncio.gather(*flushes, return_exceptions=True)
        _fail(self._waiting, rexc.ConnectionError("connection closed by aqueue"))
        self._waiting = []


def _fail(batch: Sequence[tuple[object, asyncio.Future[Any]]], exc: Exception) -> None:
    for _, waiter in batch:
        if not waiter.done():
            waiter.set_exception(exc)


class AutoPipeline:
    """A Broker's calls of one turn in shared round trips through ``send`` (one round
    trip, error replies in place), each caller's replies cut out in order. ``raw``
    tells the two kinds of commands apart, each batched on its own: the hot path's
    (answered on aqueue's own connections) and those redis-py parses."""

    def __init__(
        self,
        send: Callable[[Sequence[Command]], Awaitable[list[Any]]],
        raw: Callable[[Sequence[Command]], bool],
        timeout: float,
    ) -> None:
        self._send = send
        self._raw = raw
        self._timeout = timeout
        self.batchers = {
            kind: Batcher[Sequence[Command], list[Any]](send, self._together)
            for kind in (True, False)
        }

    def call(self, commands: Sequence[Command]) -> Awaitable[list[Any]]:
        """The replies to ``commands``, sent with this turn's other calls of their kind."""
        return self.batchers[self._raw(commands)].call(commands)

    async def _together(self, calls: list[Sequence[Command]]) -> list[list[Any]]:
        """The commands of several calls in one round trip, each call's replies apart.
        Within a deadline of its own: its callers may all have stopped waiting."""
        async with asyncio.timeout(self._timeout):
            replies = await self._send([cmd for cmds in calls for cmd in cmds])
        out = []
        at = 0
        for cmds in calls:
            out.append(replies[at : at + len(cmds)])
            at += len(cmds)
        return out

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()
