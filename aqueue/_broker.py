"""The one seam between aqueue's logic and the server: connections, scripts, errors.

Everything that talks to Redis goes through a ``Broker`` so that connection failures
become ``BrokerUnavailable`` in one place, and scripts are sent by SHA with a single
reload when the server forgot them (a restart that lost its data, a failover).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from types import TracebackType
from typing import Any, Self, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import anyio
import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from .errors import AqueueError, BrokerUnavailable

T = TypeVar("T")

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_PREFIX = "aq"
_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
SENTINEL_PORT = 26379

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
)


class Script:
    """A Lua script from ``_scripts/``, sent by SHA."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = (resources.files(__package__) / "_scripts" / f"{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


class Scripts:
    """All scripts, loaded from disk once per process."""

    def __init__(self) -> None:
        self.enqueue = Script("enqueue")
        self.claim = Script("claim")
        self.ack = Script("ack")
        self.fail = Script("fail")
        self.requeue = Script("requeue")
        self.forward = Script("forward")
        self.heartbeat = Script("heartbeat")
        self.reap = Script("reap")
        self.orphans = Script("orphans")
        self.cancel = Script("cancel")
        self.janitor = Script("janitor")


SCRIPTS = Scripts()

Call = tuple[Script, Sequence[str], Sequence[Any]]
# What Client, Worker and Inspector connect to: a URL, or a client you already have.
ServerLike = str | aioredis.Redis | RedisCluster


def redacted(url: str) -> str:
    """The URL with any password replaced, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def check_url(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in _SCHEMES:
        raise AqueueError(
            f"unsupported URL {redacted(url)!r}: use redis://, rediss://, unix://, "
            f"redis+sentinel:// or redis+cluster://"
        )
    if scheme == "redis+sentinel":
        parse_sentinel_url(url)
    if scheme == "redis+cluster":
        parse_cluster_url(url)
    return url


class SentinelURL:
    """``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[?db=N]``.

    The credentials are the master's (and its replicas'); the sentinels themselves are
    asked without them. The port of a sentinel defaults to 26379.
    """

    __slots__ = ("db", "password", "sentinels", "service", "username")

    def __init__(
        self,
        sentinels: list[tuple[str, int]],
        service: str,
        db: int,
        username: str | None,
        password: str | None,
    ) -> None:
        self.sentinels = sentinels
        self.service = service
        self.db = db
        self.username = username
        self.password = password


def _hosts(netloc: str, default_port: int, bad: str) -> tuple[list[tuple[str, int]], str, str]:
    """``[[user]:password@]host[:port][,host[:port]...]`` -> addresses, user, password."""
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    addresses: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, sep, port = item.rpartition(":")
        if not sep or "]" in port:  # no port, or the end of an [IPv6] address
            host, port = item, str(default_port)
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise AqueueError(f"{bad}: expected host:port, got {item!r}")
        addresses.append((host, int(port)))
    return addresses, username, password


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """``redis+cluster://[[user]:password@]host[:port][,host[:port]...]``: the startup
    nodes (any few of the cluster's nodes) and the credentials."""
    parts = urlsplit(url)
    bad = f"invalid redis+cluster URL {redacted(url)!r}"
    nodes, username, password = _hosts(parts.netloc, 6379, bad)
    if parts.path.strip("/") or parts.query:
        raise AqueueError(f"{bad}: a cluster has one database; give no path or query")
    return nodes, username or None, password or None


def parse_sentinel_url(url: str) -> SentinelURL:
    parts = urlsplit(url)
    bad = f"invalid redis+sentinel URL {redacted(url)!r}"
    sentinels, username, password = _hosts(parts.netloc, SENTINEL_PORT, bad)
    service = parts.path.strip("/")
    if not service or "/" in service:
        raise AqueueError(f"{bad}: the path must be the service name, e.g. /mymaster")
    db = 0
    for key, _, value in (p.partition("=") for p in parts.query.split("&") if p):
        if key != "db" or not value.isdigit():
            raise AqueueError(f"{bad}: unknown query parameter {key!r} (only db=N is accepted)")
        db = int(value)
    return SentinelURL(sentinels, service, db, username or None, password or None)


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
            raise AqueueError(
                f"expected a redis://, rediss://, unix://, redis+sentinel:// or "
                f"redis+cluster:// URL, or a redis.asyncio Redis or RedisCluster client, "
                f"got {url_or_redis!r}"
            )
        self._socket_timeout = socket_timeout if socket_timeout is not None else timeout

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
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.max_connections,
                timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                socket_timeout=self._socket_timeout,
                health_check_interval=0,
                **_pool_options(),
            )
            self._redis = aioredis.Redis.from_pool(pool)
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
        sentinel = Sentinel(u.sentinels, sentinel_kwargs=timeouts)  # type: ignore[no-untyped-call]
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
        detail = str(exc) or type(exc).__name__
        return BrokerUnavailable(f"cannot use the server at {redacted(self.url)}: {detail}")

    async def run(self, fn: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """Await ``fn()`` within the timeout, mapping connection failures."""
        limit = self.timeout if timeout is None else timeout
        try:
            with anyio.fail_after(limit):
                try:
                    return await fn()
                except (rexc.ConnectionError, rexc.ResponseError) as exc:
                    if not _is_demoted(exc):
                        raise
                    # The server is a replica now (a failover demoted it): it refused
                    # the command, so nothing ran. Drop the idle connections to it and
                    # try once more: a Sentinel-managed client reconnects to the new
                    # master.
                    await self._forget_connections()
                    return await fn()
        except TimeoutError as exc:
            if isinstance(exc, rexc.TimeoutError):
                raise self.unavailable(exc) from exc
            raise BrokerUnavailable(
                f"the server at {redacted(self.url)} did not answer within {limit:g} s"
            ) from None
        except rexc.ResponseError as exc:
            if _is_auth_error(exc) or _is_demoted(exc):  # UNBLOCKED twice in a row
                raise self.unavailable(exc) from exc
            raise
        except _UNAVAILABLE as exc:
            raise self.unavailable(exc) from exc

    async def _forget_connections(self) -> None:
        pool = getattr(self._redis, "connection_pool", None)  # a RedisCluster has none
        if pool is not None:
            await pool.disconnect(inuse_connections=False)

    async def script(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Any],
        conn: aioredis.Redis | None = None,
    ) -> Any:
        """Run one script (no timeout mapping: wrap in ``run`` for that)."""
        r = conn or self.redis
        try:
            return await r.evalsha(script.sha, len(keys), *keys, *args)
        except rexc.NoScriptError:
            await r.script_load(script.source)
            return await r.evalsha(script.sha, len(keys), *keys, *args)

    async def scripts(
        self,
        calls: Sequence[Call],
        extra: Sequence[Sequence[Any]] = (),
        conn: aioredis.Redis | None = None,
    ) -> list[Any]:
        """Run several scripts (and plain commands in ``extra``) in one round trip.

        Returns the scripts' replies in order, then the extra commands' replies. A reply
        that failed for a forgotten script is retried once after loading that script:
        NOSCRIPT means the call never ran, so running it again is safe. The extra
        commands then run again after the retried calls, so that they still follow the
        scripts (a notice must not arrive before the write it announces): extras must
        be idempotent.
        """
        if len(calls) == 1 and not extra:
            # One call needs no pipeline (and skips its overhead on the hot path).
            script, keys, args = calls[0]
            return [await self.script(script, keys, args, conn)]
        r = conn or self.redis
        pipe = r.pipeline(transaction=False)
        for script, keys, args in calls:
            # Not pipe.evalsha: a cluster pipeline refuses it by name, yet routes the
            # command by its first key (every key of a script shares one slot).
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        for cmd in extra:
            pipe.execute_command(*cmd)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        missing = [i for i, rep in enumerate(replies[: len(calls)]) if _is_noscript(rep)]
        if missing:
            for script in {calls[i][0].name: calls[i][0] for i in missing}.values():
                await r.script_load(script.source)
            pipe = r.pipeline(transaction=False)
            for i in missing:
                script, keys, args = calls[i]
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            for cmd in extra:
                pipe.execute_command(*cmd)
            again = await pipe.execute(raise_on_error=False)
            for i, rep in zip(missing, again, strict=False):
                replies[i] = rep
            replies[len(calls) :] = again[len(missing) :]
        for rep in replies:
            if isinstance(rep, BaseException):
                raise rep
        return replies

    async def close(self) -> None:
        if self._redis is not None and self._owned:
            await self._redis.aclose()
            self._redis = None
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


def _is_auth_error(exc: rexc.ResponseError) -> bool:
    text = str(exc)
    return text.startswith(("NOAUTH", "WRONGPASS", "NOPERM")) or "invalid password" in text
