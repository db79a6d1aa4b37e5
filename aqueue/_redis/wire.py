"""aqueue's own connections for the hot path: RESP over asyncio, parsed by hiredis.

Every enqueue, claim and ack is one script call or a few integer-reply writes. Through
``Redis.execute_command`` or a pipeline, redis-py wraps each call in machinery (argument
shims, a retry loop, observability hooks, a timeout scope per read, response callbacks)
that costs about as much as the loopback round trip itself. Driving redis-py's
connection objects directly instead is not an option: that layer is not redis-py's
public API and changes between minor releases (8.2 made an idle connection the server
had closed raise from its stale check, and a pool built on 8.1's behaviour handed the
same dead connection out forever).

So aqueue owns this small piece outright: an ``asyncio.Protocol`` feeding a
``hiredis.Reader`` (the parser redis-py itself uses), commands packed by hiredis too
(``pack``), a connection handshake done the way the URL asks (``_endpoint``: TLS, unix
sockets, AUTH, SELECT, client name), and a pool. Its rules:

- A connection the server closed is known as soon as the event loop sees the EOF, and
  is never handed out again.
- A connection whose state is unknown (a call failed, timed out or was cancelled while
  replies were outstanding) is closed, never returned to the pool connected: its late
  replies must never be read as those of a later call.
- Only commands whose raw reply is what aqueue wants (scripts and the integer-reply
  writes in ``RAW_COMMANDS``) go this way; everything else goes through redis-py's
  public API (``Broker``).

These connections speak RESP2 whatever the URL's ``protocol``: the replies of aqueue's
scripts and of the raw commands are the same in both.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
import redis.exceptions as rexc

from .endpoint import Endpoint

# Commands whose raw reply is what redis-py would return (no response callback).
# (BLPOP's raw reply is a list where redis-py gives a tuple: aqueue only tests for None.)
RAW_COMMANDS = frozenset(
    {
        "EVALSHA",
        "PUBLISH",
        "SADD",
        "SREM",
        "HSET",
        "HDEL",
        "HINCRBY",
        "ZADD",
        "LPUSH",
        "RPUSH",
        "LREM",
        "LLEN",
        "SRANDMEMBER",
        "BLMOVE",
        "BLPOP",
    }
)

# Error replies that mean more than "this command failed", by their first word, as the
# redis.exceptions classes redis-py raises for them (aqueue's callers test for those).
# LOADING and the authentication errors are ConnectionErrors: the server is not usable.
_ERRORS: dict[str, type[rexc.ResponseError] | type[rexc.ConnectionError]] = {
    "NOSCRIPT": rexc.NoScriptError,
    "LOADING": rexc.BusyLoadingError,
    "READONLY": rexc.ReadOnlyError,
    "NOAUTH": rexc.AuthenticationError,
    "WRONGPASS": rexc.AuthenticationError,
    "NOPERM": rexc.NoPermissionError,
    "OOM": rexc.OutOfMemoryError,
}

_MORE = object()  # hiredis's "no whole reply buffered yet"


class Connection(asyncio.Protocol):
    """One connection: a call writes its commands and waits for that many replies,
    which ``data_received`` parses as the bytes arrive. One call at a time."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(
            protocolError=rexc.InvalidResponse,
            replyError=rexc.ResponseError,
            notEnoughData=_MORE,
        )
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[list[Any]] | None = None
        self._want = 0
        self._replies: list[Any] = []
        # Why this connection is unusable, once it is; None while it is healthy.
        self.lost: Exception | None = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the interface without the base class.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self._fail(rexc.ConnectionError("the server sent a reply nobody was waiting for"))
            return
        reader = self._reader
        reader.feed(data)
        replies = self._replies
        try:
            while len(replies) < self._want:
                reply = reader.gets()
                if reply is _MORE:
                    return
                replies.append(reply)
        except rexc.InvalidResponse as exc:
            self._fail(exc)
            return
        self._waiter = None
        waiter.set_result(replies)
        if reader.has_data():  # more than was asked for: the stream is out of step
            self._fail(rexc.ConnectionError("the server sent a reply nobody was waiting for"))

    def connection_lost(self, exc: Exception | None) -> None:
        said = self._said_before_closing()
        if said is not None:
            self._fail(said)
        elif exc is None:
            self._fail(rexc.ConnectionError("Connection closed by server."))
        else:
            self._fail(rexc.ConnectionError(f"Error while reading from the server: {exc}"))

    def _said_before_closing(self) -> Exception | None:
        """The error reply the server sent the waiting call before it hung up, as the
        reason the call failed: Valkey answers a client that has not authenticated and
        sends a long command (a script call) with ``ERR Protocol error: unauthenticated
        multibulk length``, then closes the connection, and "Connection closed by
        server" would hide that a password is missing."""
        if self._waiter is None:
            return None
        said = next((r for r in self._replies if isinstance(r, rexc.ResponseError)), None)
        if said is None:
            return None
        text = str(said)
        if "unauthenticated" in text or isinstance(_classified(said), rexc.AuthenticationError):
            return rexc.AuthenticationError(text)
        return rexc.ConnectionError(f"Connection closed by server after: {text}")

    # -- use ---------------------------------------------------------------------------

    def send(self, packed: bytes, count: int) -> asyncio.Future[list[Any]]:
        """Write ``count`` packed commands; the future of their replies, in order."""
        waiter = asyncio.get_running_loop().create_future()
        if self.lost is not None:
            waiter.set_exception(self.lost)
            return waiter
        assert self._transport is not None and self._waiter is None
        self._waiter, self._want, self._replies = waiter, count, []
        self._transport.write(packed)
        return waiter

    def close(self) -> None:
        self._fail(rexc.ConnectionError("connection closed by aqueue"))

    def _fail(self, exc: Exception) -> None:
        if self.lost is None:
            self.lost = exc
        if self._transport is not None:
            self._transport.abort()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


async def connect(ep: Endpoint, context: ssl.SSLContext | None, timeout: float) -> Connection:
    """A connection to ``ep``, logged in and on its database, within ``timeout``."""
    loop = asyncio.get_running_loop()
    where = ep.path or f"{ep.host}:{ep.port}"
    try:
        async with asyncio.timeout(timeout):
            if ep.path is not None:
                _, conn = await loop.create_unix_connection(Connection, ep.path)
            else:
                _, conn = await loop.create_connection(
                    Connection,
                    ep.host,
                    ep.port,
                    ssl=context,
                    server_hostname=ep.host if context is not None else None,
                )
    except TimeoutError:
        raise rexc.TimeoutError(f"Timeout connecting to {where}") from None
    except OSError as exc:
        raise rexc.ConnectionError(f"Error {exc.errno} connecting to {where}. {exc}") from exc
    try:
        await _handshake(conn, ep)
    except BaseException:
        conn.close()
        raise
    return conn


async def _handshake(conn: Connection, ep: Endpoint) -> None:
    commands: list[tuple[str, ...]] = []
    if ep.password is not None:
        auth = ("AUTH", ep.username, ep.password) if ep.username else ("AUTH", ep.password)
        commands.append(auth)
    if ep.db:
        commands.append(("SELECT", str(ep.db)))
    if ep.client_name:
        commands.append(("CLIENT", "SETNAME", ep.client_name))
    if not commands:
        return
    for cmd, reply in zip(commands, await conn.send(pack(commands), len(commands)), strict=True):
        if isinstance(reply, rexc.ResponseError):
            error = _classified(reply)
            if cmd[0] == "AUTH" or isinstance(error, rexc.AuthenticationError):
                raise rexc.AuthenticationError(str(reply))
            raise rexc.ConnectionError(f"{cmd[0]} {cmd[1]} failed: {reply}")


class LeanPool:
    """Up to ``size`` connections to one endpoint: an idle stack, and callers past the
    cap waiting in line for the next one returned (bounded by the caller's deadline).

    A waiter is handed either a connection or None, which hands it a free place to
    open a connection of its own: the count of connections never passes ``size``.
    """

    def __init__(self, ep: Endpoint, size: int, connect_timeout: float) -> None:
        self._ep = ep
        self._size = size
        self._connect_timeout = connect_timeout
        self._context: ssl.SSLContext | None = None
        self._count = 0
        self._idle: list[Connection] = []
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._all: set[Connection] = set()

    async def get(self) -> Connection:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.lost is None:
                return conn
            self._all.discard(conn)
            self._count -= 1
        if self._count < self._size:
            self._count += 1
        else:
            conn_or_none = await self._wait()
            if conn_or_none is not None:
                if conn_or_none.lost is None:
                    return conn_or_none
                self._all.discard(conn_or_none)  # its place is ours now
        return await self._open()

    def put(self, conn: Connection) -> None:
        if conn.lost is not None:
            self._all.discard(conn)
            self._free_place()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    async def _wait(self) -> Connection | None:
        waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():  # handed over just as we gave up
                handed = waiter.result()
                if handed is None:
                    self._free_place()
                else:
                    self.put(handed)
            raise

    async def _open(self) -> Connection:
        """Open a connection in a place already counted; give the place up on failure."""
        try:
            if self._context is None and self._ep.tls is not None:
                self._context = self._ep.tls.context()
            conn = await connect(self._ep, self._context, self._connect_timeout)
        except BaseException:
            self._free_place()
            raise
        self._all.add(conn)
        return conn

    def _free_place(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._count -= 1

    async def disconnect(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
        self._count = 0


# hiredis's packer (its stub leaves the result untyped).
_pack_command: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command
# An int of fewer digits than this prints whatever limit the interpreter sets on printing
# ints (``sys.set_int_max_str_digits`` takes no limit below 640 digits, or none).
_SHORT_INT = 10**sys.int_info.str_digits_check_threshold


def pack(commands: Sequence[Sequence[Any]]) -> bytes:
    """RESP for ``commands`` in one buffer (UTF-8 strings, ``repr`` of numbers), as
    redis-py's encoder writes them. A task's enqueue or a batch of acks carries many
    small arguments, so a command of plain arguments is packed by hiredis, in C; any
    other goes through ``_pack_plainly``, which packs it the same way or refuses it."""
    out = []
    for cmd in commands:
        out.append(_pack_command(tuple(cmd)) if _plain(cmd) else _pack_plainly(cmd))
    return b"".join(out)


def _plain(cmd: Sequence[Any]) -> bool:
    """Whether hiredis packs ``cmd`` exactly as ``_pack_plainly`` does: arguments of
    exactly ``str``, ``bytes``, ``float`` or ``int``, and no int too long to print
    (hiredis crashes the process on one). It also takes a memoryview, which aqueue
    refuses, and a subclass may print or encode itself its own way: those, and
    everything else, go the Python way."""
    for arg in cmd:
        t = type(arg)
        if t is str or t is bytes or t is float:
            continue
        if t is not int or not -_SHORT_INT < arg < _SHORT_INT:
            return False
    return True


def _pack_plainly(cmd: Sequence[Any]) -> bytes:
    """``cmd`` in RESP, in Python; a ``TypeError`` naming an argument of another type
    (``bool`` too, as redis-py's encoder refuses it)."""
    out = [b"*%d\r\n" % len(cmd)]
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


async def call(pool: LeanPool, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Send ``commands`` in one write on one connection; their replies, in order.

    An error reply comes back in its place as a ``ResponseError`` (the others still
    ran, as in a non-transactional pipeline), except one that says the server is not
    usable (LOADING, NOAUTH), which is raised. A connection failure, a deadline or a
    cancellation while replies are outstanding closes the connection.
    """
    packed = pack(commands)  # before taking a connection: a bad argument costs nothing
    conn = await pool.get()
    try:
        replies = await conn.send(packed, len(commands))
    except BaseException:
        conn.close()
        raise
    finally:
        pool.put(conn)
    for i, reply in enumerate(replies):
        if isinstance(reply, rexc.ResponseError):
            error = replies[i] = _classified(reply)
            if isinstance(error, rexc.ConnectionError):
                raise error
    return replies


def _classified(reply: rexc.ResponseError) -> Exception:
    text = str(reply)
    cls = _ERRORS.get(text.split(" ", 1)[0])
    return reply if cls is None else cls(text)
