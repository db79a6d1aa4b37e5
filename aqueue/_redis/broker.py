"""The one seam between aqueue's logic and the server: connections, scripts, errors.

Everything that talks to Redis goes through a ``Broker`` so that connection failures
become ``BrokerUnavailable`` in one place, and script calls (built by ``scripts``) are
sent by SHA with a single reload when the server forgot them (a restart that lost its
data, a failover).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import redis
import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from ..errors import AqueueError, BrokerUnavailable, InvalidOption
from . import deadline as _deadline
from . import hints as _hints
from . import wire as _wire
from .batcher import AutoPipeline, Command
from .endpoint import Endpoint, endpoint
from .endpoint import redacted as redacted  # re-exported: metrics and the client use it
from .scripts import Call
from .urls import check_url, parse_cluster_url, parse_sentinel_url

T = TypeVar("T")

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_PREFIX = "aq"

# What counts as "the server is not reachable or not usable": connection and timeout
# failures, refused credentials (AuthenticationError is a ConnectionError), and a peer
# that does not speak RESP.
_UNAVAILABLE = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.InvalidResponse,
    ConnectionError,
    TimeoutError,
    OSError,
    # A cluster none of whose nodes answers, or a slot no node covers (not RedisErrors).
    rexc.RedisClusterException,
)
# Error replies of a server that cannot take the command now, whatever the command:
# full (OOM), unable to persist (MISCONF), busy in a script, loading, or a cluster or
# replication in trouble. Waiting may help; the caller cannot change the call to fix it.
_REFUSALS = ("OOM", "MISCONF", "BUSY", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN",
             "NOREPLICAS")  # fmt: skip
# Commands that hold their connection until the server answers: never batched.
_BLOCKING = frozenset({"BLPOP", "BLMOVE", "BRPOP", "BLMPOP", "BZPOPMIN", "WAIT", "WAITAOF"})
# Seconds of a rediss:// call kept for the plaintext probe (see ``Broker._unavailable``).
_TLS_PROBE = 0.5


# What Client, Worker and Inspector connect to: a URL, or a client you already have.
ServerLike = str | aioredis.Redis | RedisCluster


class Broker:
    """A lazily connected ``redis.asyncio`` client plus aqueue's conventions."""

    def __init__(
        self,
        url_or_redis: ServerLike,
        *,
        timeout: float = 5.0,
        prefix: str = DEFAULT_PREFIX,
        socket_timeout: float | None = None,
        max_connections: int = 100,
    ) -> None:
        self.timeout = timeout
        self.max_connections = max_connections
        self.prefix = prefix
        self._owned = isinstance(url_or_redis, str)
        self._redis: aioredis.Redis | None = None
        self._sentinel: Sentinel | None = None
        self.cluster = False
        # Cluster master address -> a client of its own (see ``node_connection``).
        self._node_clients: dict[str, aioredis.Redis] = {}
        self._lean: _wire.LeanPool | None = None
        self._watchdog = _deadline.Watchdog()
        # Concurrent calls share round trips (``batcher``): the hot path's raw commands
        # in one batch, anything redis-py must parse in another.
        self._autopipeline = AutoPipeline(
            lambda commands: self._send_now(self.redis, commands), _wire.raw_ok, timeout
        )
        if isinstance(url_or_redis, str):
            self.url = check_url(url_or_redis)
            self.cluster = self.url.startswith("redis+cluster:")
        elif isinstance(url_or_redis, aioredis.Redis):
            self.url = "<redis.asyncio client>"
            self._redis = url_or_redis
        elif isinstance(url_or_redis, RedisCluster):
            self.url = "<redis.asyncio cluster client>"
            self._redis = _as_redis(url_or_redis)
            self.cluster = True
        else:
            raise InvalidOption(
                f"expected a redis://, rediss://, unix://, redis+sentinel:// or "
                f"redis+cluster:// URL, or a redis.asyncio Redis or RedisCluster client, "
                f"got {url_or_redis!r}"
            )
        if self.cluster and not hasattr(RedisCluster, "pubsub"):
            # Before 8.0, redis-py's asyncio RedisCluster has no pub/sub (cancels,
            # wake-ups, Client.result): refuse now rather than fail at the first notice.
            raise AqueueError(
                f"Redis Cluster needs redis-py 8.0 or later; this is redis-py {redis.__version__}"
            )
        self._socket_timeout = socket_timeout if socket_timeout is not None else timeout
        # A TLS handshake with a server that does not speak TLS hangs until the connect
        # timeout. For rediss:// part of a call's time is kept back from connecting, for
        # a plaintext probe that can then say so (``_unavailable``) within the timeout.
        self._tls_probe = 0.0
        if self._owned and self.url.startswith("rediss:"):
            self._tls_probe = min(_TLS_PROBE, timeout / 4)
        self._connect_timeout = timeout - self._tls_probe

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None and self.url.startswith("redis+sentinel:"):
            self._redis = self._sentinel_master()
        if self._redis is None and self.cluster:
            nodes, username, password = parse_cluster_url(self.url)
            self._redis = _as_redis(
                RedisCluster(
                    startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                    username=username,
                    password=password,
                    max_connections=self.max_connections,
                    socket_connect_timeout=self.timeout,
                    socket_timeout=self._socket_timeout,
                )
            )
        if self._redis is None:
            # A blocking pool: past max_connections, callers wait for a free connection
            # (bounded by the timeout) instead of failing as if the server were down.
            # decode_responses stays off: payloads and results are bytes.
            ep = endpoint(self.url)
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.max_connections,
                timeout=self.timeout,
                socket_connect_timeout=self._connect_timeout,
                socket_timeout=self._socket_timeout,
                health_check_interval=0,
                **(ep.redis_py_options() if ep is not None else {}),
                **_pool_options(),
            )
            self._redis = aioredis.Redis.from_pool(pool)
            if ep is not None:
                # The hot path's own connections (see _wire). No socket timeout: every
                # call on them runs within ``run``'s deadline.
                self._lean = _wire.LeanPool(ep, self.max_connections, self._connect_timeout)
        return self._redis

    def _sentinel_master(self) -> aioredis.Redis:
        """A client whose connections ask the sentinels for the master's address each
        time they connect. A reply ``READONLY`` (the master it still talks to was
        demoted) drops that connection, so the next attempt finds the new master."""
        u = parse_sentinel_url(self.url)
        timeouts: dict[str, Any] = {
            "socket_connect_timeout": self.timeout,
            "socket_timeout": self._socket_timeout,
        }
        sentinel = Sentinel(u.sentinels, sentinel_kwargs=timeouts)
        self._sentinel = sentinel
        client: aioredis.Redis = sentinel.master_for(
            u.service,
            redis_class=aioredis.Redis,
            db=u.db,
            username=u.username,
            password=u.password,
            max_connections=self.max_connections,
            health_check_interval=0,
            **timeouts,
        )
        return client

    def unavailable(self, exc: BaseException) -> BrokerUnavailable:
        """``exc`` as ``BrokerUnavailable``, saying what it means when ``hints`` knows
        (a password missing, a peer that is not Redis, ...), else in its own words."""
        detail = _hints.explain(exc, self.url) or str(exc) or type(exc).__name__
        return BrokerUnavailable(f"cannot use the server at {redacted(self.url)}: {detail}")

    async def _unavailable(self, exc: BaseException, watch: _deadline.Watch) -> BrokerUnavailable:
        """``unavailable``, except that a ``rediss://`` connection that failed the way a
        TLS handshake with a plaintext server does is checked with a plaintext PING
        first: a Redis answer means the server does not speak TLS on that port."""
        ep = endpoint(self.url) if self._tls_probe and _hints.may_be_plaintext(exc) else None
        if ep is not None and await self._plaintext(ep, watch):
            return BrokerUnavailable(
                f"cannot use the server at {redacted(self.url)}: {_hints.TLS_HINT} "
                f"(it answers plain Redis protocol on that port: use redis://)"
            )
        return self.unavailable(exc)

    async def _plaintext(self, ep: Endpoint, watch: _deadline.Watch) -> bool:
        # Off the watchdog, bounded by what is left of the call's time instead: its
        # cancellation would escape this except clause unconverted.
        self._watchdog.stop(watch)
        if watch.expired:  # its cancellation is on its way: no await before it lands
            return False
        left = watch.deadline - asyncio.get_running_loop().time()
        return await _hints.speaks_plain_resp(ep, min(self._tls_probe, left))

    async def run(self, fn: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """Await ``fn()`` within the timeout, mapping connection failures."""
        limit = self.timeout if timeout is None else timeout
        watch = self._watchdog.start(limit)
        try:
            try:
                return await fn()
            except (rexc.ConnectionError, rexc.ResponseError) as exc:
                if not _is_demoted(exc):
                    raise
                # The server is a replica now (a failover demoted it): it refused the
                # command, so nothing ran. Drop the idle connections to it and try once
                # more: a Sentinel-managed client reconnects to the new master.
                await self._forget_connections()
                return await fn()
        except asyncio.CancelledError:
            # The watchdog's cancellation is this call's own: it ends here. Any other
            # (a cancel scope, a shutdown) is still pending after uncancel(), and goes on.
            if watch.expired and watch.task.uncancel() == 0:
                raise BrokerUnavailable(
                    f"the server at {redacted(self.url)} did not answer within {limit:g} s"
                ) from None
            raise
        except TimeoutError as exc:
            raise await self._unavailable(exc, watch) from exc
        except rexc.ResponseError as exc:
            if _is_auth_error(exc) or _is_demoted(exc) or is_refusal(exc):
                raise self.unavailable(exc) from exc
            raise
        except _UNAVAILABLE as exc:
            raise await self._unavailable(exc, watch) from exc
        finally:
            self._watchdog.stop(watch)

    async def _forget_connections(self) -> None:
        pool = getattr(self._redis, "connection_pool", None)  # a RedisCluster has none
        if pool is not None:
            await pool.disconnect(inuse_connections=False)

    async def script(self, call: Call, conn: aioredis.Redis | None = None) -> Any:
        """Run one script call (no timeout mapping: wrap in ``run`` for that)."""
        return (await self.scripts([call], (), conn))[0]

    async def scripts(
        self,
        calls: Sequence[Call],
        extra: Sequence[Command] = (),
        conn: aioredis.Redis | None = None,
        *,
        in_place: bool = False,
        at_once: bool = False,
    ) -> list[Any]:
        """Run several scripts (and plain commands in ``extra``) in one round trip.

        Returns the scripts' replies in order, then the extra commands' replies; an
        error reply is raised, or with ``in_place`` left in its place (a caller that can
        do without some of the commands: a full server refuses plain writes). A reply
        that failed for a forgotten script is retried once after loading that script:
        NOSCRIPT means the call never ran, so running it again is safe. The extra
        commands then run again after the retried calls, so that they still follow the
        scripts (a notice must not arrive before the write it announces): extras must
        be idempotent.

        On a cluster a pipeline runs node by node, in no set order between nodes, so
        there the notices (PUBLISH) go in a second round trip, once the writes they
        announce are done: a worker woken before a delayed task is written would sleep
        past its due time.

        ``at_once`` writes now, never waiting for the other calls of this event-loop turn
        (``batcher``): for a caller that batches its own calls (the Client's enqueues).
        """
        r = conn or self.redis
        notices_only = not calls and all(_is_notice(cmd) for cmd in extra)
        if self.cluster and not notices_only and any(_is_notice(cmd) for cmd in extra):
            writes = [cmd for cmd in extra if not _is_notice(cmd)]
            notices = [cmd for cmd in extra if _is_notice(cmd)]
            first = await self.scripts(calls, writes, conn, in_place=in_place, at_once=at_once)
            sent = await self._send(r, notices, at_once)
            for rep in sent:
                if isinstance(rep, BaseException) and not in_place:
                    raise rep
            done = iter(first[len(calls) :])
            told = iter(sent)
            return [*first[: len(calls)], *(next(told if _is_notice(c) else done) for c in extra)]
        commands = [("EVALSHA", s.sha, len(keys), *keys, *args) for s, keys, args in calls]
        replies = await self._send(r, [*commands, *extra], at_once)
        missing = [i for i, rep in enumerate(replies[: len(calls)]) if _is_noscript(rep)]
        if missing:
            for script in {calls[i][0].name: calls[i][0] for i in missing}.values():
                await r.script_load(script.source)
            again = await self._send(r, [*(commands[i] for i in missing), *extra], at_once)
            for i, rep in zip(missing, again, strict=False):
                replies[i] = rep
            replies[len(calls) :] = again[len(missing) :]
        if in_place:
            return replies
        for rep in replies:
            if isinstance(rep, BaseException):
                raise rep
        return replies

    def _send(
        self, r: aioredis.Redis, commands: Sequence[Command], at_once: bool
    ) -> Awaitable[list[Any]]:
        """Send ``commands`` in one round trip, with the other calls of this event-loop
        turn (``batcher``) unless ``at_once``; error replies come back as exceptions. A
        blocking command or a connection of the caller's own goes alone."""
        if at_once or r is not self._redis or any(cmd[0] in _BLOCKING for cmd in commands):
            return self._send_now(r, commands)
        return self._autopipeline.call(commands)

    def _send_now(self, r: aioredis.Redis, commands: Sequence[Command]) -> Awaitable[list[Any]]:
        """Send ``commands`` in one round trip; error replies come back as exceptions."""
        lean = self._lean
        if lean is not None and r is self._redis and _wire.raw_ok(commands):
            return _wire.call(lean, commands)
        return self._send_parsed(r, commands)

    async def _send_parsed(self, r: aioredis.Redis, commands: Sequence[Command]) -> list[Any]:
        """``_send_now`` through redis-py: what it must parse, Sentinel, a cluster."""
        if len(commands) == 1 and commands[0][0] == "EVALSHA":
            # No pipeline for one script (its overhead shows on the hot path); a cluster
            # client routes it by its first key.
            try:
                return [await r.execute_command(*commands[0])]  # type: ignore[no-untyped-call]
            except rexc.ResponseError as exc:
                return [exc]
        pipe = r.pipeline(transaction=False)
        for cmd in commands:
            # Not pipe.evalsha: a cluster pipeline refuses it by name, yet routes the
            # command by its first key (every key of a script shares one slot).
            pipe.execute_command(*cmd)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def node_of(self, key: str) -> str:
        """The address (``host:port``) of the cluster master holding ``key``'s slot."""
        return (await self._master_of(key)).name

    async def _master_of(self, key: str) -> ClusterNode:
        rc = cast(RedisCluster, self.redis)
        await rc.initialize()  # learns the slot map on first use; a no-op after
        node = rc.get_node_from_key(key)
        assert node is not None  # None stands for a missing replica; a master is never
        return node

    @asynccontextmanager
    async def node_connection(self, key: str) -> AsyncIterator[aioredis.Redis]:
        """A client on one connection to the cluster master holding ``key``'s slot, for
        what is defined per connection (WAITAOF counts the writes of its own
        connection only). A RedisCluster lends none of its connections, so each master
        gets a pool of its own, made like the cluster's connections to it (same class,
        credentials, TLS and timeouts). Commands for keys of another master fail with
        MOVED: nothing is followed silently to another connection."""
        node = await self._master_of(key)
        client = self._node_clients.get(node.name)
        if client is None:
            kwargs = dict(node.connection_kwargs)
            # Cluster-only settings of redis-py's node connections; the pool has its own.
            kwargs.pop("oss_cluster_maint_notifications_handler", None)
            kwargs.pop("maint_notifications_config", None)
            pool = aioredis.BlockingConnectionPool(
                connection_class=node.connection_class,
                max_connections=self.max_connections,
                timeout=self.timeout,
                **kwargs,
                **_pool_options(),
            )
            client = self._node_clients[node.name] = aioredis.Redis.from_pool(pool)
        async with client.client() as conn:
            yield conn

    async def close(self) -> None:
        await self._autopipeline.close()
        for client in self._node_clients.values():
            await client.aclose()
        self._node_clients.clear()
        if self._redis is not None and self._owned:
            await self._redis.aclose()
            self._redis = None
        if self._lean is not None:
            await self._lean.disconnect()
            self._lean = None
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()
            self._sentinel = None


def _pool_options() -> dict[str, Any]:
    """redis-py 8.1.0 (redis/redis-py#4252): with maintenance notifications on "auto",
    its default under RESP3, the asyncio pool skips its check for idle connections the
    server closed, so after a server restart the first command on each one fails.
    aqueue uses no maintenance notifications: turning them off restores the check."""
    if not hasattr(aioredis.ConnectionPool, "maint_notifications_enabled"):
        return {}
    from redis.maint_notifications import MaintNotificationsConfig

    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


class Connected:
    """Close and ``async with`` for the objects that own a Broker (Client, Inspector)."""

    _broker: Broker

    @property
    def broker(self) -> Broker:
        return self._broker

    async def close(self) -> None:
        """Close the connections this object opened (never a client passed in)."""
        await self._broker.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _is_notice(command: Sequence[Any]) -> bool:
    return bool(command[0] == "PUBLISH")  # aqueue writes command names upper case


def _is_noscript(reply: object) -> bool:
    return isinstance(reply, rexc.NoScriptError) or (
        isinstance(reply, rexc.ResponseError) and str(reply).startswith("NOSCRIPT")
    )


def _as_redis(cluster: RedisCluster) -> aioredis.Redis:
    """A RedisCluster where the code expects a Redis. Both offer the commands aqueue
    sends (scripts by their first key, single-key commands, non-transactional
    pipelines, pub/sub, PUBLISH), which is what ``tests/test_cluster.py`` checks;
    ``Redis.client()`` and multi-key commands across slots (MGET of worker cards) have
    no cluster equivalent."""
    return cast(aioredis.Redis, cluster)


def _is_demoted(exc: BaseException) -> bool:
    """The reply of a master demoted to replica: READONLY to a write, as a
    Sentinel-managed connection reports it (this ConnectionError), or a blocked command
    released with UNBLOCKED when the role changed. A plain ReadOnlyError is left alone:
    with a redis:// URL a replica is the caller's choice (the Inspector reads one)."""
    text = str(exc)
    if isinstance(exc, rexc.ConnectionError):
        return text == "The previous master is now a slave"
    return isinstance(exc, rexc.ResponseError) and text.startswith("UNBLOCKED")


def is_refusal(exc: rexc.ResponseError) -> bool:
    """The server cannot take any command now (see ``_REFUSALS``). redis-py strips the
    first word of some replies into the class (ClusterDownError and the like)."""
    if isinstance(exc, (rexc.ClusterDownError, rexc.OutOfMemoryError, rexc.TryAgainError)):
        return True
    return str(exc).startswith(_REFUSALS)


def _is_auth_error(exc: rexc.ResponseError) -> bool:
    """Refused credentials, or (as redis-py raises SELECT's error reply while it
    connects) a database the server does not have: the URL is wrong, not the command."""
    text = str(exc)
    return (
        text.startswith(("NOAUTH", "WRONGPASS", "NOPERM"))
        or "invalid password" in text
        or "DB index is out of range" in text
    )
