"""Workers ride through server outages and cut connections (docs/guarantees.md, "Server
outages" and "Lease audit").

Every test starts its own real Valkey servers (``EmbeddedServer``) and, where the
behaviour is the worker's, a real worker subprocess: ``aqueue worker
tests.chaos.net_app:worker`` (lease_ttl 2 s, server timeout 1 s, concurrency 8). Its
handler counts each run in the server (``HINCRBY net:done <id> 1``), so "nothing lost"
means every enqueued id has a count of at least 1 and no task is left pending, active,
waiting for a retry or archived. The worker's stderr goes to a file the tests read
while it runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError

import aqueue
from aqueue._redis.scripts import SCRIPTS
from aqueue.server import EmbeddedServer, free_port

from ..helpers import tail, text, wait_for
from .net_app import DONE_KEY, LEASE_TTL, Work, work
from .net_proxy import Proxy

ROOT = Path(__file__).resolve().parents[2]
WORKER_APP = "tests.chaos.net_app:worker"
# Starting a child interpreter and importing aqueue takes a while on a busy machine.
START_TIMEOUT = 20.0
QUEUE = "default"
K = f"aq:{{{QUEUE}}}:"
LOST = "lost the server"
BACK = "server reachable again"
# aqueue/_worker/outage.py: the backoff between tries during an outage is capped at 5 s.
MAX_BACKOFF = 5.0


# -- the worker subprocess -------------------------------------------------------------


class WorkerProcess:
    """An ``aqueue worker`` child whose stderr (its log) is written to a file."""

    def __init__(self, process: anyio.abc.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def count(self, text: str) -> int:
        return self.log().count(text)

    def assert_alive(self) -> None:
        code = self.process.returncode
        assert code is None, f"the worker exited ({code}) mid-run; its log: {self.log_path}"

    async def wait_log(self, text: str, count: int = 1, timeout: float = START_TIMEOUT) -> float:
        """Wait until ``text`` appears ``count`` times in the log; return the wait (s)."""
        start = time.monotonic()
        try:
            with anyio.fail_after(timeout):
                while self.count(text) < count:
                    self.assert_alive()
                    await anyio.sleep(0.01)
        except TimeoutError:
            pytest.fail(f"the worker did not log {text!r} x{count} in {timeout} s: {self.log_path}")
        return time.monotonic() - start

    async def stop(self) -> int:
        """SIGTERM, then wait for the exit code (a graceful stop)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            with anyio.fail_after(START_TIMEOUT):
                return await self.process.wait()
        except TimeoutError:
            pytest.fail(f"the worker did not stop after SIGTERM; its log: {self.log_path}")


@asynccontextmanager
async def worker_process(
    url: str, tmp_path: Path, app: str = WORKER_APP
) -> AsyncIterator[WorkerProcess]:
    """Start ``aqueue worker tests.chaos.net_app:worker --url URL`` (or another ``app``)
    and wait until it serves; on the way out make sure it is gone."""
    log_path = tmp_path / "worker.log"
    env = {k: v for k, v in os.environ.items() if k != "AQUEUE_URL"}
    with log_path.open("wb") as log_file:
        process = await anyio.open_process(
            [sys.executable, "-m", "aqueue._cli", "worker", app, "--url", url],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
    w = WorkerProcess(process, log_path)
    try:
        await w.wait_log("serving queues")
        yield w
    finally:
        if process.returncode is None:
            process.kill()
        await process.aclose()


# -- reading the outcome straight from the server --------------------------------------


@dataclass
class Snapshot:
    done: dict[str, int] = field(default_factory=dict)  # id -> runs
    states: dict[str, str] = field(default_factory=dict)
    pending: int = 0
    retry: int = 0
    scheduled: int = 0
    archived: int = 0
    leases: list[str] = field(default_factory=list)  # worker ids with a lease
    lease_lists: dict[str, int] = field(default_factory=dict)  # key -> length

    def missing(self, ids: list[str]) -> list[str]:
        return [i for i in ids if self.done.get(i, 0) < 1]

    def active(self) -> list[str]:
        return [i for i, s in self.states.items() if s.startswith("@")]

    def settled(self, ids: list[str]) -> bool:
        """Every id ran, and none is left waiting, running or retrying.

        Acked with retention 0, a task leaves no state behind at all.
        """
        return not self.missing(ids) and not self.states

    def summary(self) -> str:
        reruns = sum(1 for n in self.done.values() if n > 1)
        by_state: dict[str, int] = {}
        for s in self.states.values():
            key = "active" if s.startswith("@") else s
            by_state[key] = by_state.get(key, 0) + 1
        return (
            f"ran={len(self.done)} reruns={reruns} states={by_state} pending={self.pending} "
            f"retry={self.retry} scheduled={self.scheduled} archived={self.archived} "
            f"leases={self.leases} lease_lists={self.lease_lists}"
        )


async def snapshot(r: aioredis.Redis) -> Snapshot:
    done = await r.hgetall(DONE_KEY)
    states = await r.hgetall(K + "states")
    lease_keys = [k async for k in r.scan_iter(match=K + "l:*")]
    leases = await r.zrange(K + "leases", 0, -1)
    s = Snapshot(
        done={str(text(k)): int(v) for k, v in done.items()},
        states={str(text(k)): str(text(v)) for k, v in states.items()},
        pending=await r.llen(K + "pending"),
        retry=await r.zcard(K + "retry"),
        scheduled=await r.zcard(K + "scheduled"),
        archived=await r.zcard(K + "archived"),
        leases=[m.decode() if isinstance(m, bytes) else str(m) for m in leases],
    )
    for key in lease_keys:
        s.lease_lists[str(text(key))] = await r.llen(key)
    return s


async def wait_settled(
    r: aioredis.Redis, ids: list[str], w: WorkerProcess, timeout: float = 30.0
) -> Snapshot:
    """Wait until every id ran and nothing is left; fail with what is left otherwise."""
    last = Snapshot()
    try:
        with anyio.fail_after(timeout):
            while True:
                w.assert_alive()
                last = await snapshot(r)
                if last.settled(ids):
                    return last
                await anyio.sleep(0.02)
    except TimeoutError:
        pytest.fail(
            f"not settled after {timeout} s: {len(last.missing(ids))} of {len(ids)} never ran; "
            f"{last.summary()}; worker log: {w.log_path}"
        )


async def poll(condition: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> float:
    """Wait until ``condition()`` holds; return how long that took (s)."""
    start = time.monotonic()
    await wait_for(condition, timeout=timeout, every=0.01)
    return time.monotonic() - start


async def enqueue(url: str, n: int, ms: float) -> list[str]:
    """Enqueue ``n`` tasks of ``ms`` milliseconds each; return their ids."""
    async with aqueue.Client(url) as client:
        infos = await client.enqueue_many([aqueue.Job(work, Work(url, ms)) for _ in range(n)])
    return [info.id for info in infos]


@asynccontextmanager
async def direct(url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client for the test's own reads. Its idle connections go stale when the
    server restarts: the reads are idempotent, so it simply tries again."""
    r = aioredis.Redis.from_url(
        url,
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 3),
        retry_on_error=[ConnectionError],
    )
    try:
        yield r
    finally:
        await r.aclose()


async def start(server: EmbeddedServer) -> None:
    """Start a server without blocking the event loop (which may be relaying for it)."""
    await anyio.to_thread.run_sync(server.start)


def persistent(port: int, directory: Path) -> EmbeddedServer:
    return EmbeddedServer(port, appendonly=True, appendfsync="always", directory=directory)


async def assert_released(r: aioredis.Redis) -> None:
    """After a graceful stop: no lease and no lease list is left."""
    s = await snapshot(r)
    assert s.leases == [], s.summary()
    assert not any(s.lease_lists.values()), s.summary()


async def blocked_on_bell(r: aioredis.Redis) -> bool:
    """True while some client (the idle worker) is blocked on a queue's bell (BLPOP)."""
    clients = await r.client_list()
    return any("b" in c["flags"] and c["cmd"] == "blpop" for c in clients)


async def ran_at_least(r: aioredis.Redis, n: int) -> bool:
    return int(await r.hlen(DONE_KEY)) >= n


def check_outage_logged_once(log: str, during_outage: str) -> None:
    """One outage: one warning while it lasts, one when it ends.

    ``during_outage`` is the log as it was just before the server came back. (Idle
    pooled connections gone stale with the old server must not be reported as a new
    outage: see ``test_client_works_again_at_once_after_the_server_restarts``.)
    """
    assert during_outage.count(LOST) == 1, tail(during_outage)
    assert during_outage.count(BACK) == 0, tail(during_outage)
    assert log.count(LOST) == 1, tail(log)
    assert log.count(BACK) == 1, tail(log)


# -- the tests ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_server_sigkilled_and_restarted_with_appendfsync_always_loses_no_task(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    first = persistent(port, data).start()
    second = persistent(port, data)
    try:
        with anyio.fail_after(60):
            ids = await enqueue(first.url, 300, ms=20)
            async with worker_process(first.url, tmp_path) as w, direct(first.url) as r:
                await poll(lambda: ran_at_least(r, 50))
                ran_before_kill = int(await r.hlen(DONE_KEY))
                first.kill()
                assert ran_before_kill < len(ids), "the kill came too late to be mid-run"
                await w.wait_log(LOST)
                during_outage = w.log()
                await start(second)
                restarted = time.monotonic()
                # What was acknowledged before the kill survived it.
                assert await r.hlen(DONE_KEY) >= ran_before_kill
                ids += await enqueue(second.url, 100, ms=20)
                final = await wait_settled(r, ids, w)
                settle_time = time.monotonic() - restarted
                w.assert_alive()
                assert final.pending == final.retry == final.archived == 0, final.summary()
                assert await w.stop() == 0
                await assert_released(r)
                log = w.log()
        reruns = sum(1 for n in final.done.values() if n > 1)
        print(
            f"\nserver SIGKILL: {len(ids)} tasks, {ran_before_kill} ran before the kill, all "
            f"ran {settle_time:.2f} s after the restart, {reruns} ran twice, "
            f"'{LOST}' logged {log.count(LOST)}x"
        )
        check_outage_logged_once(log, during_outage)
    finally:
        first.close()
        second.close()


# Longer than net_app's lease_ttl (2 s): the worker's lease lapses during the cut.
LONG_CUT = LEASE_TTL + 1.0
SHORT_CUT = 0.5
# Handlers that outlast the long cut and the lease, so that the worker must cancel them.
SLOW_MS = 4000.0


@pytest.mark.anyio
async def test_cut_connections_lose_no_task_and_leave_none_active(tmp_path: Path) -> None:
    with EmbeddedServer() as server, anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            proxy = Proxy(server.port)
            await tg.start(proxy.serve)
            async with worker_process(proxy.url, tmp_path) as w, direct(server.url) as r:
                # 1. Cut while the worker is idle, blocked on its bell.
                await poll(lambda: blocked_on_bell(r))
                proxy.cut()
                await w.wait_log(LOST)
                await anyio.sleep(SHORT_CUT)  # the outage itself, not a wait for an outcome
                proxy.restore()
                ids = await enqueue(server.url, 20, ms=10)
                await wait_settled(r, ids, w)

                # 2. Cut mid-run, shorter than the lease: the acks are retried.
                ids += await enqueue(server.url, 300, ms=50)
                await poll(lambda: ran_at_least(r, 60))
                assert (await snapshot(r)).active(), "no task was in flight at the cut"
                proxy.cut()
                await anyio.sleep(SHORT_CUT)
                proxy.restore()

                await wait_settled(r, ids, w)

                # 3. Cut mid-run, longer than the lease, with handlers that outlast it:
                # the worker cancels them itself, gives up its acks, and the reaper or
                # the lease audit returns their tasks once the connection is back.
                slow = await enqueue(server.url, 4, ms=SLOW_MS)
                ids += slow + await enqueue(server.url, 100, ms=50)
                await poll(lambda: _all_active(r, slow))
                await poll(lambda: ran_at_least(r, len(ids) - 80))
                in_flight = len((await snapshot(r)).active())
                proxy.cut()
                await anyio.sleep(LONG_CUT)
                w.assert_alive()
                proxy.restore()
                restored = time.monotonic()
                ids += await enqueue(server.url, 50, ms=10)
                final = await wait_settled(r, ids, w)
                settle_time = time.monotonic() - restored
                assert final.active() == [], final.summary()
                assert final.pending == final.retry == final.archived == 0, final.summary()
                assert await w.stop() == 0
                await assert_released(r)
                log = w.log()
            tg.cancel_scope.cancel()
    # The lease lapsed without the server's word: the worker gave up its handlers itself.
    assert "could not renew the lease" in log, tail(log)
    assert "lease lost, handler cancelled" in log, tail(log)
    returned = log.count("orphaned task(s)") + log.count("of lost workers")
    assert returned, f"neither the audit nor the reaper returned anything:\n{tail(log)}"
    reruns = sum(1 for n in final.done.values() if n > 1)
    print(
        f"\nproxy cuts: {len(ids)} tasks, {in_flight} active at the long cut, connections "
        f"severed={proxy.severed} dropped={proxy.dropped} relayed={proxy.relayed}; settled "
        f"{settle_time:.2f} s after the last restore; {reruns} ran twice; "
        f"'{LOST}' x{log.count(LOST)}, audit returns x{log.count('orphaned task(s)')}, "
        f"reaper returns x{log.count('of lost workers')}"
    )


# net_app.worker_long_lease: a 3 s lease. Its ack writer retries after 0, 0.05, 0.15,
# 0.35, 0.75 and 1.55 s; a cut of 2.2 s ends well before the lease would lapse.
LONG_LEASE_APP = "tests.chaos.net_app:worker_long_lease"
CUT_WITHIN_LEASE = 2.2


@pytest.mark.anyio
async def test_acks_are_retried_for_as_long_as_the_lease_is_valid(tmp_path: Path) -> None:
    """docs/guarantees.md: the worker "retries writing a finished attempt's outcome for
    as long as its lease is valid". The cut starts right after a renewal and ends before
    the lease would lapse: no ack may be given up, so no finished task runs again."""
    with EmbeddedServer() as server, anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            proxy = Proxy(server.port)
            await tg.start(proxy.serve)
            async with (
                worker_process(proxy.url, tmp_path, LONG_LEASE_APP) as w,
                direct(server.url) as r,
            ):
                worker_id = w.log().split("worker ", 1)[1].split()[0]
                ids = await enqueue(server.url, 300, ms=50)
                await poll(lambda: ran_at_least(r, 40))
                # Cut just after a renewal: the lease has all of lease_ttl left.
                expiry = await r.zscore(K + "leases", worker_id)
                await poll(lambda: _renewed(r, worker_id, expiry))
                # Let the renewal's reply reach the worker: cut just after it, not on it.
                await anyio.sleep(0.1)
                proxy.cut()
                await anyio.sleep(CUT_WITHIN_LEASE)
                proxy.restore()
                final = await wait_settled(r, ids, w)
                assert await w.stop() == 0
                log = w.log()
            tg.cancel_scope.cancel()
    assert "could not write" not in log, tail(log)
    assert "could not renew" not in log, tail(log)
    assert [i for i, n in final.done.items() if n > 1] == [], final.summary()


async def _renewed(r: aioredis.Redis, worker_id: str, before: float | None) -> bool:
    return await r.zscore(K + "leases", worker_id) != before


OUTAGE = 3.0


@pytest.mark.anyio
async def test_long_outage_is_logged_once_and_the_worker_resumes_within_the_backoff_cap(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    first = persistent(port, data).start()
    second = persistent(port, data)
    try:
        with anyio.fail_after(60):
            async with worker_process(first.url, tmp_path) as w, direct(first.url) as r:
                await poll(lambda: blocked_on_bell(r))
                killed = time.monotonic()
                first.kill()
                noticed = await w.wait_log(LOST)
                # Hold the outage: the backoff grows to its cap meanwhile.
                await anyio.sleep(max(0.0, OUTAGE - (time.monotonic() - killed)))
                during_outage = w.log()
                await start(second)
                back = time.monotonic()
                ids = await enqueue(second.url, 1, ms=1)
                reconnect = await w.wait_log(BACK, timeout=MAX_BACKOFF + 5)
                await wait_settled(r, ids, w, timeout=MAX_BACKOFF + 5)
                pickup = time.monotonic() - back
                w.assert_alive()
                assert await w.stop() == 0
                log = w.log()
        print(
            f"\n{OUTAGE:g} s outage: noticed after {noticed:.2f} s, 'lost the server' "
            f"x{during_outage.count(LOST)} during it; back {reconnect:.2f} s after the "
            f"restart, a new task ran {pickup:.2f} s after it"
        )
        assert pickup <= MAX_BACKOFF + 1.5, f"resumed {pickup:.2f} s after the restart"
        check_outage_logged_once(log, during_outage)
    finally:
        first.close()
        second.close()


@pytest.mark.anyio
async def test_worker_survives_a_restart_that_lost_all_data(tmp_path: Path) -> None:
    port = free_port()
    first = EmbeddedServer(port).start()
    second = EmbeddedServer(port)  # a new, empty data directory
    try:
        with anyio.fail_after(60):
            async with worker_process(first.url, tmp_path) as w, direct(first.url) as r:
                ids = await enqueue(first.url, 20, ms=5)
                await wait_settled(r, ids, w)
                worker_id = w.log().split("worker ", 1)[1].split()[0]
                first.kill()
                await w.wait_log(LOST)
                await start(second)
                assert await r.hlen(DONE_KEY) == 0, "the new server is not empty"
                # Before the test writes anything, the worker registers again: its
                # queue and its lease (at its next heartbeat or claim).
                await poll(lambda: _registered(r, worker_id))
                ids = await enqueue(second.url, 50, ms=5)
                await wait_settled(r, ids, w)
                # The scripts the worker runs were loaded again into the new server.
                shas = [SCRIPTS.claim.sha, SCRIPTS.ack.sha, SCRIPTS.heartbeat.sha]
                assert await r.script_exists(*shas) == [True, True, True], tail(w.log())
                w.assert_alive()
                assert await w.stop() == 0
                await assert_released(r)
    finally:
        first.close()
        second.close()


async def _all_active(r: aioredis.Redis, ids: list[str]) -> bool:
    states = await r.hmget(K + "states", ids)
    return all(str(text(s)).startswith("@") for s in states)


async def _registered(r: aioredis.Redis, worker_id: str) -> bool:
    in_set = await r.sismember("aq:queues", QUEUE)
    lease = await r.zscore(K + "leases", worker_id)
    return bool(in_set) and lease is not None


@pytest.mark.anyio
async def test_client_raises_broker_unavailable_within_its_timeout_while_the_server_is_down() -> (
    None
):
    server = EmbeddedServer().start()
    try:
        async with aqueue.Client(server.url, timeout=1) as client:
            await client.enqueue(work, Work(server.url))
            # Frozen: connections are accepted by the kernel but nothing answers.
            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)
            try:
                start_at = time.monotonic()
                with pytest.raises(aqueue.BrokerUnavailable):
                    await client.enqueue(work, Work(server.url))
                frozen = time.monotonic() - start_at
            finally:
                server.process.send_signal(signal.SIGCONT)
            # Dead: connections are refused.
            server.kill()
            start_at = time.monotonic()
            with pytest.raises(aqueue.BrokerUnavailable):
                await client.enqueue_many([aqueue.Job(work, Work(server.url))])
            dead = time.monotonic() - start_at
        print(f"\nBrokerUnavailable after {frozen:.2f} s (frozen server), {dead:.3f} s (dead)")
        assert 0.9 <= frozen <= 2.0
        assert dead <= 1.5
    finally:
        server.close()


@pytest.mark.anyio
async def test_client_works_again_at_once_after_the_server_restarts() -> None:
    port = free_port()
    first = EmbeddedServer(port).start()
    second = EmbeddedServer(port)
    try:
        async with aqueue.Client(first.url, timeout=1) as client:
            await client.enqueue(work, Work(first.url))
            first.kill()
            await start(second)
            # The server is back: the next enqueue must succeed.
            await client.enqueue(work, Work(second.url))
    finally:
        first.close()
        second.close()
