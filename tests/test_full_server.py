"""A full server (``maxmemory`` reached with ``noeviction``): ``enqueue`` raises a clear
error naming the cause, nothing already enqueued is lost, a worker starts and finishes
every task there (the scripts that end, move or renew work run on a full server:
``#!lua flags=allow-oom``; the registry's plain writes wait), and enqueues work again
once the acks freed memory."""

from __future__ import annotations

import anyio
import pytest
import redis

import aqueue
from aqueue.server import EmbeddedServer, free_port

from .helpers import wait_for

pytestmark = pytest.mark.anyio


def _used(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


async def test_a_full_server_refuses_new_tasks_loses_none_and_drains() -> None:
    with EmbeddedServer(free_port()) as server:
        r = redis.Redis.from_url(server.url)
        r.config_set("maxmemory", _used(r) + 2_000_000)
        written = 0
        refused: aqueue.BrokerUnavailable | None = None
        async with aqueue.Client(server.url) as client:
            for _ in range(10_000):
                try:
                    await client.enqueue_many([aqueue.Job("t", "x" * 200) for _ in range(50)])
                except aqueue.BrokerUnavailable as exc:
                    refused = exc
                    break
                written += 50
        assert refused is not None
        assert "server is full" in str(refused) and "maxmemory" in str(refused)
        assert written > 0
        assert r.llen("aq:{default}:pending") == written  # nothing already written lost
        # Past the limit now: every plain write (SADD, SET, ZADD) is refused.
        r.config_set("maxmemory", _used(r) - 100_000)
        done: list[int] = []
        mux = aqueue.Mux()

        @mux.task("t")
        async def t(ctx: aqueue.Context, s: str) -> None:
            done.append(1)

        async with aqueue.Worker(mux, server.url, concurrency=50):
            await wait_for(lambda: len(done) >= written, timeout=60)
            await anyio.sleep(0.5)  # the last acks
        assert len(done) == written  # each once
        assert r.llen("aq:{default}:pending") == 0
        assert r.hlen("aq:{default}:states") == 0
        async with aqueue.Client(server.url) as client:
            info = await client.enqueue("t", "after")  # the acks freed the memory
        assert info.state == "pending"
        r.close()
