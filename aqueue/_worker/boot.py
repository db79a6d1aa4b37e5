"""A worker's first contact with its server, and the checks it makes at start.

First contact pings the server, refuses one that is too old, registers the queue
names, declares the limits of the worker's Mux (the latest started worker's declaration
binds every worker's claims), takes over from dead predecessors (``successor``), takes
the lease and subscribes to cancel requests. A
server that cannot be used yet (down, restarting, still loading its data) is waited
for, with the backoff and log policy of an outage, when the caller wants to wait; what
waiting cannot fix (refused credentials, a peer that is not Redis, a server without a
command aqueue needs) is raised at once. Then risky server settings are logged
(docs/guarantees.md, "Server configuration").
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Protocol

import redis.exceptions as rexc

from .._reads import text
from .._redis.broker import Broker, redacted
from .._redis.keys import queues_key
from .._redis.scripts import Call
from ..errors import BrokerUnavailable, UnsupportedServer
from .outage import Outage, waiting_helps

log = logging.getLogger("aqueue.worker")

# The oldest server aqueue runs on (BLMOVE and SMISMEMBER need 6.2; 7 is what is tested).
# Valkey reports a Redis version (7.2.4) it is compatible with.
MIN_VERSION = (7, 0)


class Subscriber(Protocol):
    """What first contact needs of the cancel listener: subscribing before the first
    claim, and closing a subscription a failed try left behind."""

    async def subscribe(self) -> None: ...
    async def close(self) -> None: ...


class Boot:
    """First contact and the start-up checks, given only what they touch (the broker,
    the queue names, the lease keeper's ``renew``, the listener and the ``Outage``)."""

    def __init__(
        self,
        broker: Broker,
        queues: Collection[str],
        *,
        renew: Callable[[], Awaitable[None]],
        listener: Subscriber,
        outage: Outage,
        declarations: Mapping[str, Call] | None = None,
        limited: Collection[str] = (),
        take_over: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._broker = broker
        self._queues = queues
        self._declarations = dict(declarations or {})
        self._limited = limited
        self._renew = renew
        self._take_over = take_over
        self._listener = listener
        self._outage = outage

    async def start(self, wait: bool = False) -> None:
        """Make first contact, waiting for the server if ``wait`` (else a server that
        cannot be used yet raises ``BrokerUnavailable``), then warn about risky
        settings."""
        outage = self._outage
        while True:
            try:
                await self._first_contact()
            except BrokerUnavailable as exc:
                if not wait or not waiting_helps(exc):
                    raise
                await outage.failed(exc)
            except rexc.ResponseError as exc:  # a refusal the broker leaves to callers
                error = self._broker.unavailable(exc)
                if not wait or not waiting_helps(exc):
                    raise error from exc
                await outage.failed(error)
            else:
                break
        outage.ok()
        await self._check_config()

    async def _first_contact(self) -> None:
        broker = self._broker
        await broker.run(lambda: broker.redis.ping())
        await self._check_version()
        # Through ``scripts``: the hot path's own connections are tried at start too.
        register = [("SADD", queues_key(broker.prefix), *self._queues)]
        await broker.run(lambda: scripts_when_full(broker, [], register))
        await self.declare()
        if self._take_over is not None:
            # Before our lease is renewed: under a reused worker id, its lease lists
            # are the predecessor's, and they go back first.
            await self._take_over()
        await self._renew()
        await self._listener.subscribe()

    async def declare(self) -> None:
        """Publish the limits of the worker's Mux (again after a server lost its data)."""
        declared = self._declarations
        if declared:
            broker = self._broker
            # Listed with the queues, so that the Inspector finds a queue's limits
            # before any task of it was enqueued.
            limited = self._limited
            register = [("SADD", queues_key(broker.prefix), *limited)] if limited else []
            await broker.run(lambda: scripts_when_full(broker, list(declared.values()), register))

    async def _check_version(self) -> None:
        """Refuse a server older than aqueue supports: waiting will not upgrade it."""
        broker = self._broker
        try:
            info: dict[Any, Any] = await broker.run(lambda: broker.redis.info("server"))
        except BrokerUnavailable as exc:
            if waiting_helps(exc):
                raise
            return  # INFO refused to this user (NOPERM): nothing to check
        except rexc.ResponseError:
            return  # INFO renamed away on a managed server: nothing to check
        version = server_version(info)
        if version is not None and too_old(version):
            raise UnsupportedServer(
                f"the server at {redacted(broker.url)} is Redis {version}: aqueue needs "
                f"Redis {'.'.join(map(str, MIN_VERSION))} or later, or Valkey"
            )

    async def _check_config(self) -> None:
        broker = self._broker
        try:
            config: dict[Any, Any] = await broker.run(
                lambda: broker.redis.config_get("maxmemory-policy")
            )
            policy = text(config.get(b"maxmemory-policy", config.get("maxmemory-policy", "")))
            persist: dict[Any, Any] = await broker.run(
                lambda: broker.redis.config_get("appendonly")
            )
            aof = text(persist.get(b"appendonly", persist.get("appendonly", "")))
            save: dict[Any, Any] = await broker.run(lambda: broker.redis.config_get("save"))
            rdb = text(save.get(b"save", save.get("save", "")))
        except Exception:  # CONFIG is often disabled on managed servers: nothing to check
            return
        if policy and policy != "noeviction":
            log.warning(
                "the server's maxmemory-policy is %r, not 'noeviction': under memory "
                "pressure it may evict tasks",
                policy,
            )
        if aof != "yes" and not rdb:
            log.warning(
                "the server keeps nothing on disk (appendonly no, no save points): a "
                "server restart loses every task"
            )


async def scripts_when_full(
    broker: Broker, calls: list[Call], extra: list[tuple[Any, ...]]
) -> list[Any]:
    """``broker.scripts``, except that plain writes a full server refuses (maxmemory
    with noeviction: OOM) are let go: the registry they keep is written again at the
    next heartbeat, and a worker must start and drain a full server (its scripts that
    end, move or renew work run there: ``#!lua flags=allow-oom``)."""
    replies = await broker.scripts(calls, extra, in_place=True)
    for i, reply in enumerate(replies):
        full = isinstance(reply, rexc.OutOfMemoryError) and i >= len(calls)
        if isinstance(reply, BaseException) and not full:
            raise reply
    return replies


def server_version(info: dict[Any, Any]) -> str | None:
    """The ``redis_version`` of an ``INFO server`` reply; a cluster client may answer
    with one reply per node, and then the oldest counts. None when there is none that
    reads as a version: such a server is given the benefit of the doubt."""
    found = [
        v
        for k, value in info.items()
        if text(k) == "redis_version" and (v := text(value))[:1].isdigit()
    ]
    for value in info.values():
        if isinstance(value, dict):
            found += [v for v in [server_version(value)] if v is not None]
    if not found:
        return None
    return min(found, key=_version_tuple)


def too_old(version: str) -> bool:
    return _version_tuple(version) < MIN_VERSION


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(itertools.takewhile(str.isdigit, part))
        parts.append(int(digits or 0))
    return tuple(parts)
