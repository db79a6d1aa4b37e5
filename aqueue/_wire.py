"""The hot path's own use of a redis-py connection pool.

``Redis.execute_command`` and ``Pipeline.execute`` wrap every call in machinery that a
queue's hot path pays for on each enqueue, claim and ack: argument-deprecation shims,
a retry loop, observability hooks, a timeout scope per read and response callbacks.
Measured on one loopback server, that is about as much time as the round trip itself.
Here the commands of one call are packed into one write on one pooled connection and
their raw replies read back: the same wire traffic, less Python.

Only commands whose reply needs no redis-py response callback may go this way (scripts
and the integer-reply writes in ``RAW_COMMANDS``); everything else, and every client
that is not a plain ``Redis`` over a pool (a cluster, a single-connection client), goes
through redis-py's own path.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import anyio
import redis.asyncio as aioredis
import redis.exceptions as rexc

# Commands whose raw reply is what redis-py would return (no response callback).
RAW_COMMANDS = frozenset({"EVALSHA", "PUBLISH", "SADD", "HSET", "ZADD", "LPUSH", "RPUSH", "BLMOVE"})


_scope_class: type[anyio.CancelScope] | None = None


def deadline_scope(seconds: float) -> anyio.CancelScope:
    """``anyio.CancelScope(deadline=now + seconds)`` for the asyncio backend, without
    anyio's backend lookup on every call: the worker opens one per task (its timeout),
    and the lookup was a visible share of a no-op task's cost. The loop's clock is
    ``time.monotonic()`` (uvloop's too, at millisecond resolution); redis.asyncio needs
    asyncio anyway."""
    global _scope_class
    cls = _scope_class
    if cls is None:
        cls = _scope_class = type(anyio.CancelScope())
    return cls(deadline=time.monotonic() + seconds)


class Pool(Protocol):
    """What ``call`` needs of a pool: redis-py's pools and ``LeanPool`` both have it."""

    async def get_connection(self) -> Any: ...

    async def release(self, connection: Any) -> None: ...


class LeanPool:
    """A pool for the hot path: a stack of idle connections and a cap.

    redis-py's BlockingConnectionPool takes a lock, a condition, a timeout scope and
    observability hooks for every connection it lends. Here an idle connection is
    popped, checked the way redis-py checks it (a connection with unread bytes, or
    that the server closed, is reconnected before use), and pushed back; past the cap,
    callers wait in line for the next one returned (bounded by the caller's deadline).
    Connections are made like redis-py's own, from the ``template`` pool's settings.
    """

    def __init__(self, template: aioredis.ConnectionPool, size: int) -> None:
        self._class = template.connection_class
        self._kwargs = template.connection_kwargs
        self._size = size
        self._count = 0
        self._idle: list[Any] = []
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._all: set[Any] = set()
        # redis-py 8 renamed the check (the old name warns); 5.x-7.x have the old one.
        self._check = "can_read" if hasattr(self._class, "can_read") else "can_read_destructive"

    async def get_connection(self) -> Any:
        if self._idle:
            conn = self._idle.pop()
        elif self._count < self._size:
            self._count += 1
            conn = self._class(**self._kwargs)
            self._all.add(conn)
        else:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                conn = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._put(waiter.result())  # handed over just as we gave up
                raise
        try:
            if not conn.is_connected:
                await conn.connect()
            elif await getattr(conn, self._check)():
                await conn.disconnect()
                await conn.connect()
        except BaseException:
            self._put(conn)
            raise
        return conn

    async def release(self, connection: Any) -> None:
        self._put(connection)

    def _put(self, connection: Any) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    async def disconnect(self) -> None:
        for conn in self._all:
            await conn.disconnect()


class Watch:
    """One call under a ``Watchdog``: its deadline, its task, and whether it expired."""

    __slots__ = ("deadline", "expired", "task")

    def __init__(self, deadline: float, task: asyncio.Task[Any]) -> None:
        self.deadline = deadline
        self.task = task
        self.expired = False


class Watchdog:
    """Deadlines for a Broker's calls without a timer per call.

    A cancel scope or ``asyncio.timeout`` per call schedules and cancels a timer each
    time, about as costly as all of aqueue's own work in an enqueue. Here a call only
    registers its deadline. One timer, set for the earliest deadline in flight, cancels
    the calls past theirs, and each such call turns that cancellation into
    ``BrokerUnavailable`` (see ``Broker.run``). As calls of one broker share a timeout,
    a new call's deadline is almost never the earliest: the timer is rarely moved, and
    it fires about once per timeout while calls are in flight, not at all when idle.
    """

    def __init__(self) -> None:
        self._watched: set[Watch] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = math.inf

    def start(self, seconds: float) -> Watch:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        watch = Watch(loop.time() + seconds, task)
        self._watched.add(watch)
        if watch.deadline < self._due or self._loop is not loop:
            self._arm(loop, watch.deadline)
        return watch

    def stop(self, watch: Watch) -> None:
        self._watched.discard(watch)

    def _arm(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop, self._due = loop, due
        self._timer = loop.call_at(due, self._check)

    def _check(self) -> None:
        loop = self._loop
        assert loop is not None
        self._timer, self._due = None, math.inf
        now = loop.time()
        for watch in list(self._watched):
            if watch.task.done():  # a call from a loop that is gone
                self._watched.discard(watch)
            elif watch.deadline <= now:
                self._watched.discard(watch)
                watch.expired = True
                watch.task.cancel()
        if self._watched:
            self._arm(loop, min(w.deadline for w in self._watched))


def lean_pool(client: aioredis.Redis) -> Pool | None:
    """The pool to use directly, or None when ``client`` must go through redis-py."""
    if not isinstance(client, aioredis.Redis) or client.single_connection_client:
        return None
    pool: Pool = client.connection_pool
    return pool


def pack(commands: Sequence[Sequence[Any]]) -> bytes:
    """RESP for ``commands`` in one buffer, as redis-py's encoder would write it (UTF-8
    strings, ``repr`` of numbers), with less Python per argument: a task's enqueue or a
    batch of acks carries many small arguments. Only for pools made here (``LeanPool``),
    whose connections use that default encoding."""
    out: list[bytes] = []
    for cmd in commands:
        out.append(b"*%d\r\n" % len(cmd))
        for arg in cmd:
            if isinstance(arg, bytes):
                data = arg
            elif isinstance(arg, str):
                data = arg.encode()
            elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
                data = repr(arg).encode()
            else:
                raise TypeError(f"cannot send {type(arg).__name__} {arg!r:.40} to the server")
            out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def raw_ok(commands: Sequence[Sequence[Any]]) -> bool:
    """Names are matched as aqueue writes them, upper case: any other spelling simply
    takes redis-py's path."""
    return all(cmd[0] in RAW_COMMANDS for cmd in commands)


async def call(pool: Pool, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Send ``commands`` in one write on one connection; their replies, in order.

    An error reply comes back in its place as a ``ResponseError`` (the others still
    ran, as in a non-transactional pipeline). A connection or timeout failure, or a
    cancellation, while replies are outstanding closes the connection: its unread
    replies must never be taken for those of a later call.
    """
    conn = await pool.get_connection()
    try:
        packed = pack(commands) if isinstance(pool, LeanPool) else conn.pack_commands(commands)
        await conn.send_packed_command(packed, False)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await conn.read_response())
            except rexc.ResponseError as exc:
                replies.append(exc)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)
    return replies
