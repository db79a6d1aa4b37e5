"""Redis Cluster: ``redis+cluster://`` URLs and RedisCluster clients on 3 Valkey masters.

What is specific to a cluster: queues spread over the masters, several at once. The
contract tests of the other modules run on a cluster too (the ``url`` fixture's
"cluster" kind). The cluster is the session's (conftest), flushed around each test.
Each queue's keys share the hash tag ``{queue}``, so a queue lives on one master and
the queues spread over the three by their names.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster

import aqueue
from aqueue._redis.urls import check_url, parse_cluster_url

from .clusters import Cluster, command
from .helpers import araw_client, raw_client, text, wait_for

pytestmark = pytest.mark.anyio
# Four queues whose hash tags land on all three masters (checked in a test below).
QUEUES = ["a", "b", "c", "default"]


@pytest.fixture
def url(cluster: Cluster) -> Iterator[str]:
    """Only the cluster kind here."""
    cluster.flush()
    yield cluster.url
    cluster.flush()


mux = aqueue.Mux()
SEEN: list[tuple[str, int]] = []


@mux.task("c:echo")
async def echo(ctx: aqueue.Context, n: int) -> int:
    SEEN.append((ctx.queue, n))
    return n * 2


@mux.task("c:flaky")
async def flaky(ctx: aqueue.Context, n: int) -> int:
    if ctx.retry_count == 0:
        raise RuntimeError("first attempt fails")
    return n


@mux.task("c:slow")
async def slow(ctx: aqueue.Context, n: int) -> None:
    await anyio.sleep(30)


ALL = dict.fromkeys(QUEUES, 1)


# -- URLs -----------------------------------------------------------------------------


def test_cluster_url_lists_startup_nodes_and_credentials() -> None:
    nodes, user, password = parse_cluster_url("redis+cluster://u:pw@10.0.0.1:7000,10.0.0.2")
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 6379)]
    assert (user, password) == ("u", "pw")


@pytest.mark.parametrize("bad", ["redis+cluster://h:1/2", "redis+cluster://h:1?db=2"])
def test_cluster_url_with_a_database_is_refused(bad: str) -> None:
    with pytest.raises(aqueue.AqueueError, match="one database"):
        check_url(bad)


# -- a live cluster ---------------------------------------------------------------------


def test_the_test_queues_spread_over_all_three_masters(cluster: Cluster) -> None:
    assert {cluster.node_of(f"aq:{{{q}}}:pending") for q in QUEUES} == {0, 1, 2}


async def test_tasks_of_queues_on_every_master_are_enqueued_and_processed(
    url: str, cluster: Cluster
) -> None:
    SEEN.clear()
    async with aqueue.Client(url) as client:
        await client.enqueue_many(
            [aqueue.Job("c:echo", i, queue=q) for q in QUEUES for i in range(5)]
        )
        for i, node in enumerate(cluster.nodes):
            # Every key of a queue is on the master of its slot, and nowhere else.
            held = {str(text(k)).split("}")[0][4:] for k in node.keys("aq:{*")}
            assert held == {q for q in QUEUES if cluster.node_of(f"aq:{{{q}}}:x") == i}
        async with aqueue.Worker(mux, url, queues=ALL, concurrency=8):
            await wait_for(lambda: len(SEEN) == 20)
    assert sorted(SEEN) == sorted((q, i) for q in QUEUES for i in range(5))


async def test_results_retries_and_delayed_tasks_work_on_a_cluster(url: str) -> None:
    async with (
        aqueue.Client(url) as client,
        aqueue.Worker(mux, url, queues=ALL, retry_delay=lambda *a: 0.0),
    ):
        echoed = await client.enqueue("c:echo", 21, queue="b", retention=60)
        retried = await client.enqueue("c:flaky", 7, queue="c", retention=60)
        later = await client.enqueue("c:echo", 5, queue="a", process_in=0.3, retention=60)
        assert await client.result(echoed, queue="b", timeout=10) == 42
        assert await client.result(retried, queue="c", timeout=10) == 7
        assert await client.result(later, queue="a", timeout=10) == 10


async def test_unique_tasks_are_refused_while_locked_on_a_cluster(url: str) -> None:
    async with aqueue.Client(url) as client:
        await client.enqueue("c:echo", 1, queue="c", unique=60)
        with pytest.raises(aqueue.DuplicateTask):
            await client.enqueue("c:echo", 1, queue="c", unique=60)


async def test_an_active_task_is_cancelled_through_pub_sub_on_a_cluster(url: str) -> None:
    async with (
        aqueue.Client(url) as client,
        aqueue.Inspector(url) as inspector,
        aqueue.Worker(mux, url, queues=ALL),
    ):
        info = await client.enqueue("c:slow", 0, queue="c")

        async def active() -> bool:
            return (await inspector.get_task("c", info.id)).state == aqueue.State.ACTIVE

        await wait_for(active)
        await client.cancel("c", info.id)

        async def archived() -> bool:
            return (await inspector.get_task("c", info.id)).state == aqueue.State.ARCHIVED

        await wait_for(archived)


async def test_inspector_reads_queues_on_every_master(url: str) -> None:
    async with aqueue.Client(url) as client, aqueue.Inspector(url) as inspector:
        await client.enqueue_many(
            [aqueue.Job("c:echo", i, queue=q) for q in QUEUES for i in range(2)]
        )
        assert sorted(await inspector.queues()) == sorted(QUEUES)
        for q in QUEUES:
            assert (await inspector.queue_info(q)).pending == 2
        tasks = await inspector.list_tasks("a", aqueue.State.PENDING)
        assert len(tasks) == 2


async def test_inspector_lists_workers_on_a_cluster(url: str) -> None:
    # Worker cards are keys of their own, in different slots: reading them must not
    # send one multi-key command across slots.
    async with (
        aqueue.Inspector(url) as inspector,
        aqueue.Worker(mux, url, queues=ALL),
        aqueue.Worker(mux, url, queues={"a": 1}),
        aqueue.Worker(mux, url, queues={"b": 1}),
        aqueue.Worker(mux, url, queues={"c": 1}),
    ):
        workers = await inspector.workers()
        assert len(workers) == 4


async def test_an_existing_redis_cluster_client_is_accepted(url: str, cluster: Cluster) -> None:
    SEEN.clear()
    rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", cluster.servers[0].port)])
    try:
        async with aqueue.Client(rc) as client:
            await client.enqueue("c:echo", 3, queue="a")
        async with aqueue.Worker(mux, rc, queues=ALL):
            await wait_for(lambda: SEEN == [("a", 3)])
    finally:
        await rc.aclose()


TICKS: list[int] = []


@mux.cron("* * * * * *", name="c:tick", queue="b")
async def tick(ctx: aqueue.Context) -> None:
    assert ctx.enqueued_at is not None
    TICKS.append(int(ctx.enqueued_at.timestamp()))


async def test_cron_enqueues_each_tick_once_with_two_workers_on_a_cluster(url: str) -> None:
    TICKS.clear()
    async with aqueue.Worker(mux, url, queues=ALL), aqueue.Worker(mux, url, queues=ALL):
        await wait_for(lambda: len(TICKS) >= 2, timeout=10)
    assert len(TICKS) == len(set(TICKS))


async def test_durable_enqueue_on_a_cluster_waits_for_the_aof_of_each_master(
    url: str, cluster: Cluster
) -> None:
    async with aqueue.Client(url, durable=True) as client:
        one = await client.enqueue("c:echo", 1, queue="a")
        # Queues on all three masters, new ones (their registration is a write too) and
        # a delayed task (its notice follows the writes), in one call.
        jobs: list[aqueue.Job[Any]] = [
            aqueue.Job("c:echo", i, queue=q) for q in [*QUEUES, "e", "f"] for i in range(3)
        ]
        many = await client.enqueue_many([*jobs, aqueue.Job("c:echo", 9, process_in=60)])
    assert len(many) == 19
    r = raw_client(url)
    try:
        for info in [one, *many]:
            state = "scheduled" if info.payload == 9 else "pending"
            assert text(r.hget(f"aq:{{{info.queue}}}:states", info.id)) == state
        assert {str(text(q)) for q in r.smembers("aq:queues")} == {*QUEUES, "e", "f"}
    finally:
        r.close()


async def test_durable_enqueue_through_an_existing_cluster_client(
    url: str, cluster: Cluster
) -> None:
    rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", cluster.servers[0].port)])
    try:
        async with aqueue.Client(rc, durable=True) as client:
            infos = await client.enqueue_many([aqueue.Job("c:echo", 1, queue=q) for q in QUEUES])
        assert await rc.ping()  # the Client closed its own connections only
        for info in infos:
            assert text(await rc.hget(f"aq:{{{info.queue}}}:states", info.id)) == "pending"
    finally:
        await rc.aclose()


async def test_durable_enqueue_names_the_master_whose_aof_is_off(
    url: str, cluster: Cluster
) -> None:
    node = cluster.nodes[cluster.node_of("aq:{b}:x")]
    port = cluster.servers[cluster.node_of("aq:{b}:x")].port
    command(node, "CONFIG", "SET", "appendonly", "no")
    try:
        async with aqueue.Client(url) as client:
            await client.enqueue("c:echo", 1, queue="a", durable=True)  # another master
            with pytest.raises(aqueue.AqueueError, match=f"appendonly off.*node 127.0.0.1:{port}"):
                await client.enqueue_many(
                    [aqueue.Job("c:echo", 2, queue=q) for q in QUEUES], durable=True
                )
    finally:
        command(node, "CONFIG", "SET", "appendonly", "yes")

        def rewritten() -> bool:
            info = node.info("persistence")
            return bool(info["aof_enabled"]) and not info["aof_rewrite_in_progress"]

        await wait_for(rewritten)


async def test_raw_clients_count_and_list_the_keys_of_every_master(
    url: str, cluster: Cluster
) -> None:
    # What the tests' own checks rely on ("nothing written", "no key left").
    async with aqueue.Client(url) as client:
        await client.enqueue_many([aqueue.Job("c:echo", 1, queue=q) for q in QUEUES])
    expected = {str(text(k)) for n in cluster.nodes for k in n.keys("*")}
    assert len({cluster.node_of(k) for k in expected}) == 3
    r = raw_client(url)
    ar = araw_client(url)
    try:
        assert r.dbsize() == await ar.dbsize() == len(expected)
        assert {str(text(k)) for k in r.keys("*")} == expected
        assert {str(text(k)) for k in await ar.keys("*")} == expected
        assert {str(text(k)) async for k in ar.scan_iter()} == expected
    finally:
        r.close()
        await ar.aclose()
