"""Each Lua script's edge cases, run directly against real servers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import aqueue
from aqueue._redis import scripts
from aqueue._redis.broker import Broker
from aqueue._redis.keys import QueueKeys, queue_keys

from .helpers import text

pytestmark = pytest.mark.anyio


DAY = "2026-01-01"


def now() -> int:
    return int(time.time() * 1000)


class Q:
    """One queue, driven through the scripts the way a worker drives them."""

    def __init__(self, broker: Broker, name: str = "default") -> None:
        self.b = broker
        self.k: QueueKeys = queue_keys("aq", name)

    async def register(self, wid: str, ttl_ms: int = 30_000) -> int:
        t = now()
        (result,) = await self.b.script(scripts.heartbeat([self.k], wid, t, t + ttl_ms))
        return int(result)

    async def claim(self, wid: str, n: int) -> Any:
        """The claimed items (id, token, message, retried, ...), or the refusal."""
        k = self.k
        reply = await self.b.script(scripts.claim(k, k.lease(wid), n, wid, 0, now()))
        return reply if isinstance(reply, int) else reply[3:]

    async def reap(self, *wids: str) -> list[int]:
        reply = scripts.parse_reap(await self.b.script(scripts.reap(self.k, wids, now(), DAY)))
        return [reply.recovered, reply.archived]

    async def ack(self, wid: str, task_id: str, token: str) -> list[bytes]:
        k = self.k
        call = scripts.ack(k, k.lease(wid), now(), DAY, [task_id, token], [])
        reply: list[bytes] = await self.b.script(call)
        return reply

    async def state(self, task_id: str) -> str | None:
        return text(await self.b.redis.hget(self.k.states, task_id))

    async def expire(self, wid: str) -> None:
        await self.b.redis.zadd(self.k.leases, {wid: now() - 1})


@pytest.fixture
async def q(url: str) -> AsyncIterator[Q]:
    broker = Broker(url)
    yield Q(broker)
    await broker.close()


@pytest.fixture
async def client(url: str) -> AsyncIterator[aqueue.Client]:
    async with aqueue.Client(url) as c:
        yield c


async def test_claim_refuses_without_a_live_lease(q: Q, client: aqueue.Client) -> None:
    await client.enqueue("t")
    assert await q.claim("w1", 10) == -2
    assert await q.b.redis.llen(q.k.pending) == 1  # nothing moved


async def test_claim_takes_oldest_first_and_marks_each_active_with_a_token(
    q: Q, client: aqueue.Client
) -> None:
    a = await client.enqueue("t", 1)
    b = await client.enqueue("t", 2)
    await q.register("w1")
    reply = await q.claim("w1", 10)
    ids = [reply[i].decode() for i in range(0, len(reply), 4)]
    tokens = [reply[i + 1].decode() for i in range(0, len(reply), 4)]
    assert ids == [a.id, b.id]
    assert len(set(tokens)) == 2
    assert await q.state(a.id) == "@" + tokens[0]
    assert await q.b.redis.llen(q.k.lease("w1")) == 2


async def test_claim_on_a_paused_queue_takes_nothing(q: Q, client: aqueue.Client) -> None:
    first = await client.enqueue("t", 1)
    await q.register("w1")
    await q.b.redis.set(q.k.paused, 1)
    assert await q.claim("w1", 5) == -1
    assert await q.b.redis.llen(q.k.lease("w1")) == 0
    assert text(await q.b.redis.lindex(q.k.pending, -1)) == first.id
    assert await q.state(first.id) == "pending"


async def test_ack_with_a_stale_token_changes_nothing(q: Q, client: aqueue.Client) -> None:
    info = await client.enqueue("t")
    await q.register("w1")
    reply = await q.claim("w1", 1)
    token = reply[1].decode()
    assert await q.ack("w1", info.id, "w1.999") == [info.id.encode()]  # stale
    assert await q.state(info.id) == "@" + token
    assert await q.ack("w1", info.id, token) == []
    assert await q.state(info.id) is None


async def test_reaper_returns_active_tasks_of_an_expired_lease_as_a_failed_attempt(
    q: Q, client: aqueue.Client
) -> None:
    info = await client.enqueue("t", max_retry=3)
    await q.register("dead")
    await q.claim("dead", 1)
    assert await q.reap("dead") == [0, 0]  # lease still live: untouched
    await q.expire("dead")
    assert await q.reap("dead") == [1, 0]
    assert await q.state(info.id) == "pending"
    assert text(await q.b.redis.hget(q.k.retried, info.id)) == "1"
    error = text(await q.b.redis.hget(q.k.errors, info.id))
    assert error is not None
    assert error.startswith("worker lost")
    assert text(await q.b.redis.lindex(q.k.pending, -1)) == info.id  # at the head
    assert await q.b.redis.exists(q.k.lease("dead")) == 0
    assert await q.b.redis.zscore(q.k.leases, "dead") is None
    # A second reaper racing the first finds nothing left to do.
    assert await q.reap("dead") == [0, 0]


async def test_reaper_archives_a_task_whose_retries_are_spent(q: Q, client: aqueue.Client) -> None:
    info = await client.enqueue("t", {"x": 1}, max_retry=0, unique=3600)
    await q.register("dead")
    await q.claim("dead", 1)
    await q.expire("dead")
    assert await q.reap("dead") == [0, 1]
    assert await q.state(info.id) == "archived"
    assert await q.b.redis.zscore(q.k.archived, info.id) is not None
    # Archived is final: the unique lock is gone.
    await client.enqueue("t", {"x": 1}, max_retry=0, unique=3600)


async def test_reaper_returns_a_moved_but_never_started_task_without_counting(
    q: Q, client: aqueue.Client
) -> None:
    info = await client.enqueue("t")
    await q.register("dead")
    await q.b.redis.lmove(q.k.pending, q.k.lease("dead"), "RIGHT", "LEFT")  # then crashed
    await q.expire("dead")
    assert await q.reap("dead") == [1, 0]
    assert await q.state(info.id) == "pending"
    assert await q.b.redis.hget(q.k.retried, info.id) is None


async def test_heartbeat_reports_a_lease_that_had_expired(q: Q) -> None:
    assert await q.register("w1") == 0  # new
    assert await q.register("w1") == 1  # live
    await q.expire("w1")
    assert await q.register("w1") == 0  # had expired: held tasks may be elsewhere


async def test_forward_moves_due_tasks_and_reports_the_next_due_time(
    q: Q, client: aqueue.Client
) -> None:
    due_soon = await client.enqueue("t", process_in=0.05)
    later = await client.enqueue("t", process_in=60)
    time.sleep(0.06)  # noqa: ASYNC251 - the clock passing the due time is the point
    moved, nxt = await q.b.script(scripts.forward(q.k, now(), 100))
    assert moved == 1
    assert later.next_process_at is not None
    assert abs(nxt - later.next_process_at.timestamp() * 1000) < 5
    assert await q.state(due_soon.id) == "pending"
    assert await q.state(later.id) == "scheduled"


async def test_orphans_returns_unknown_ids_of_a_live_lease_and_keeps_held_ones(
    q: Q, client: aqueue.Client
) -> None:
    held = await client.enqueue("t", 1)
    lost = await client.enqueue("t", 2)
    await q.register("w1")
    await q.claim("w1", 2)  # imagine the reply for `lost` never arrived
    k = q.k
    n = await q.b.script(scripts.orphans(k, k.lease("w1"), [held.id]))
    assert n == 1
    assert [text(i) for i in await q.b.redis.lrange(k.lease("w1"), 0, -1)] == [held.id]
    assert await q.state(lost.id) == "pending"
    assert text(await q.b.redis.lindex(k.pending, -1)) == lost.id
