"""Small helpers for tests: wait on an outcome with a deadline, read task state, and
plain clients to look at a test server's keys directly, whatever its kind."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import anyio
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster

from aqueue._redis.urls import parse_cluster_url

CLUSTER_SCHEME = "redis+cluster://"


def is_cluster(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEME)


def raw_client(url: str, *, decode_responses: bool = False) -> redis.Redis:
    """A plain (sync) client for any URL the ``url`` fixture yields: a RedisCluster for
    a ``redis+cluster://`` URL, a Redis otherwise. Typed as Redis, as aqueue types its
    own cluster clients: tests send commands both offer. On a cluster, KEYS, DBSIZE
    and PUBSUB NUMSUB ask every master and merge the replies (see ``_whole_dataset``)."""
    if not is_cluster(url):
        return redis.Redis.from_url(url, decode_responses=decode_responses)
    nodes, username, password = parse_cluster_url(url)
    startup = [ClusterNode(host, port) for host, port in nodes]  # type: ignore[no-untyped-call]
    rc = RedisCluster(
        startup_nodes=startup,
        username=username,
        password=password,
        decode_responses=decode_responses,
    )
    _whole_dataset(rc)
    return cast(redis.Redis, rc)


def araw_client(url: str, *, decode_responses: bool = False) -> aioredis.Redis:
    """The asyncio twin of ``raw_client``."""
    if not is_cluster(url):
        return aioredis.Redis.from_url(url, decode_responses=decode_responses)
    nodes, username, password = parse_cluster_url(url)
    rc = AsyncRedisCluster(
        startup_nodes=[AsyncClusterNode(host, port) for host, port in nodes],
        username=username,
        password=password,
        decode_responses=decode_responses,
    )
    _whole_dataset(rc)
    return cast(aioredis.Redis, rc)


def _whole_dataset(rc: RedisCluster | AsyncRedisCluster) -> None:
    """redis-py sends KEYS, DBSIZE and PUBSUB NUMSUB to one node of a cluster, so a
    test asking "which keys are left?", "is the server empty?" or "who listens?" would
    see a third of the answer and pass or fail wrongly. Send them to every master (and
    NUMSUB to every node: a subscriber may be on any) instead: redis-py merges the
    replies (lists joined, counts summed). SCAN and FLUSHDB cover every master already."""
    rc.command_flags.update(dict.fromkeys(("KEYS", "DBSIZE"), rc.PRIMARIES))
    rc.command_flags["PUBSUB NUMSUB"] = rc.ALL_NODES


def node_url(url: str, key: str) -> str:
    """A plain ``redis://`` URL that can read and write ``key``: for a cluster, that of
    the master holding its slot (for code that only takes a plain URL); else ``url``."""
    if not is_cluster(url):
        return url
    rc = cast(Any, raw_client(url))
    try:
        node = rc.get_node_from_key(key)
        return f"redis://{node.host}:{node.port}/0"
    finally:
        rc.close()


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, every: float = 0.005
) -> None:
    """Wait until ``condition()`` is true; fail the test after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(every)


def text(value: bytes | str | None) -> str | None:
    """redis-py types replies as bytes or str; with decode_responses they are str."""
    return value.decode() if isinstance(value, bytes) else value


class Peek:
    """Reads a queue's raw state straight from the server (until the Inspector exists)."""

    def __init__(self, url: str, queue: str = "default") -> None:
        self.r = araw_client(url, decode_responses=True)
        self.k = f"aq:{{{queue}}}:"

    async def state(self, task_id: str) -> str | None:
        return text(await self.r.hget(self.k + "states", task_id))

    async def error(self, task_id: str) -> str | None:
        return text(await self.r.hget(self.k + "errors", task_id))

    async def retried(self, task_id: str) -> int:
        return int(text(await self.r.hget(self.k + "retried", task_id)) or 0)

    async def pending(self) -> list[str]:
        """Pending ids, next to run first."""
        ids = await self.r.lrange(self.k + "pending", 0, -1)
        return [str(text(i)) for i in reversed(ids)]

    async def stats(self) -> dict[str, str]:
        return {
            str(text(k)): str(text(v)) for k, v in (await self.r.hgetall(self.k + "stats")).items()
        }

    async def close(self) -> None:
        await self.r.aclose()


def tail(text: str, lines: int = 50) -> str:
    """The last ``lines`` lines of ``text`` (a log), after one saying how many were left
    out: what a failure message or report shows of a log that may run to thousands."""
    kept = text.splitlines()
    if len(kept) <= lines:
        return text
    return f"[... {len(kept) - lines} earlier lines left out ...]\n" + "\n".join(kept[-lines:])


# The password of the ``locked_server`` fixture (tests/conftest.py).
LOCKED_PASSWORD = "s3cret-pass"
