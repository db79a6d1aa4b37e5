"""What a connection failure means, in words a user can act on.

The error texts of a refused or failed connection name the mechanism rather than the
cause: a server that wants a password answers HELLO with a paragraph about HELLO's AUTH
option (or hangs up on a long command, Valkey's guard against unauthenticated clients);
an HTTP server on the port is "Protocol error, got "H" as reply type byte"; a TLS client
talking to a plaintext server waits out its timeout. ``explain`` recognises these causes
in an exception and its causes and says what to change; ``speaks_plain_resp`` is the
check behind the TLS one, which no error text gives away.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

import redis.exceptions as rexc

from ..errors import InvalidOption
from .endpoint import Endpoint, endpoint

# What a server that wants a password says to a client that gave none: to a command
# (NOAUTH), to redis-py's RESP3 HELLO, and, closing the connection, to a command longer
# than it lets an unauthenticated client send.
_NO_PASSWORD = (
    "noauth",
    "authentication required",
    "hello must be called with the client already authenticated",
    "unauthenticated multibulk length",
    "unauthenticated bulk length",
)
TLS_HINT = "TLS handshake failed: is the server speaking TLS?"


def explain(exc: BaseException, url: str) -> str | None:
    """The cause of ``exc`` (or of an exception it was raised from) in one sentence, when
    it is one of those above; None otherwise."""
    error: BaseException | None = exc
    for _ in range(10):  # a cause chain is short; a cycle must not hang us
        if error is None:
            return None
        hint = _one(error, url)
        if hint is not None:
            return hint
        error = error.__cause__
    return None


def _one(error: BaseException, url: str) -> str | None:
    text = str(error)
    lowered = text.lower()
    parts = urlsplit(url)
    if any(words in lowered for words in _NO_PASSWORD) and not _password(url):
        if not parts.scheme:  # a client the caller made
            return "the server requires a password, and the client passed in gives none"
        return (
            f"the server requires a password (add it to the URL: "
            f"{parts.scheme}://:PASSWORD@host...)"
        )
    if isinstance(error, rexc.InvalidResponse) and "protocol error" in lowered:
        return f"not a Redis server (it answered something else: {text})"
    if "db index is out of range" in lowered:
        db = _database(url)
        return (
            f"the server has no database {db} (DB index is out of range: its `databases` "
            f"setting says how many it has)"
        )
    if isinstance(error, rexc.OutOfMemoryError) or lowered.startswith("oom "):
        return (
            "the server is full (its memory reached maxmemory, and it evicts nothing): "
            "it refused the write, nothing was written; workers keep finishing tasks, "
            "which frees memory, or raise maxmemory "
            f"({text})"
        )
    if isinstance(error, ssl.SSLError) and not isinstance(error, ssl.SSLCertVerificationError):
        return f"{TLS_HINT} ({text})"
    if "[SSL:" in text and "CERTIFICATE_VERIFY_FAILED" not in text:  # redis-py's wrapping
        return f"{TLS_HINT} ({text})"
    return None


def _database(url: str) -> str:
    try:
        ep = endpoint(url)
    except InvalidOption:
        ep = None
    return str(ep.db) if ep is not None else "with that number"


def _password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


def may_be_plaintext(exc: BaseException) -> bool:
    """Whether ``exc``, met on a ``rediss://`` connection, could be a TLS handshake with
    a server that does not speak TLS: it hangs (a timeout), or the server hangs up or
    answers bytes that are not TLS (an SSL error other than a certificate's)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return False
    return isinstance(exc, (TimeoutError, rexc.TimeoutError, rexc.ConnectionError, OSError))


async def speaks_plain_resp(ep: Endpoint, timeout: float) -> bool:
    """Whether the server at ``ep``'s address answers a plaintext PING as a Redis server
    does (``+PONG``, or an error such as ``-NOAUTH``), within ``timeout``."""
    if ep.path is not None or timeout <= 0:
        return False
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(ep.host, ep.port)
            writer.write(b"PING\r\n")
            await writer.drain()
            answer = await reader.readline()
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()
    return answer.startswith((b"+PONG", b"-NOAUTH", b"-ERR", b"-WRONGPASS"))
