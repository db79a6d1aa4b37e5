"""One soak run, start to verdict.

1. The record server and the server under test (AOF, fsync ``always``) start; each
   worker slot gets its fault proxy and its ``aqueue worker`` command.
2. For ``seconds``: the producers enqueue, the schedule's faults happen.
3. Every fault is healed (processes resumed, paths restored, the server up, dead slots
   started again) and the fleet is given ``settle`` seconds to finish everything that
   was enqueued.
4. Every slot is stopped with SIGTERM; cron ticks fired during the stop are drained by
   a worker without a scheduler.
5. The oracle judges the end state.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import msgspec
import redis.asyncio as aioredis

import aqueue
from aqueue._redis.keys import QueueKeys
from aqueue.testing import drain

from .app import QUEUES, close_recorders, mux
from .faultnet import FaultProxy
from .fleet import Slot
from .oracle import PREFIX, Oracle, Verdict, strs
from .plan import Faults, draw
from .produce import Producers
from .record import read_events
from .servers import ServerUnderTest, record_server


@dataclass(frozen=True)
class Settings:
    seed: int
    seconds: float = 60.0
    slots: int = 4
    supervised: int = 1  # how many of the slots run --processes 2
    server: str = "valkey"
    lease_ttl: float = 6.0
    rate: float = 25.0  # enqueues per second
    every: float = 2.0  # seconds between faults, on average
    settle: float = 90.0
    logs: Path = Path(".")


async def soak(cfg: Settings) -> Verdict:
    record = record_server()
    server = ServerUnderTest(cfg.server)
    try:
        server.start("always")
        return await _soak(cfg, server, record.url)
    finally:
        server.close()
        record.close()


async def _soak(cfg: Settings, server: ServerUnderTest, record_url: str) -> Verdict:
    os.environ["SOAK_RECORD_URL"] = record_url  # the final drain runs the handlers here
    env = {"SOAK_RECORD_URL": record_url, "SOAK_LEASE_TTL": str(cfg.lease_ttl)}
    rec = aioredis.Redis.from_url(record_url)
    raw = aioredis.Redis.from_url(server.url, decode_responses=True)
    async with anyio.create_task_group() as proxies:
        slots: list[Slot] = []
        for n in range(cfg.slots):
            proxy = FaultProxy(server.port, random.Random(cfg.seed + n))
            await proxies.start(proxy.serve)
            processes = 2 if n < cfg.supervised else 1
            slots.append(Slot(n, proxy, processes=processes, env=env, logs=cfg.logs))
            slots[-1].start()
        await _until(lambda: _workers(raw, cfg.slots + cfg.supervised), 60, "the fleet to start")

        plan = draw(cfg.seed, cfg.seconds, cfg.slots, cfg.every, cfg.lease_ttl)
        faults = Faults(slots, server, random.Random(cfg.seed))
        started = time.time()
        async with aqueue.Client(server.url, timeout=3.0) as client:
            producers = Producers(client, rec, cfg.seed)
            async with anyio.create_task_group() as tg:
                tg.start_soon(producers.run, cfg.seconds, cfg.rate)
                tg.start_soon(faults.run, plan)
        faulted = time.time() - started

        await _heal(slots, server)
        live = {i for s in slots for i in s.live_ids()}
        settled = await _settled(raw, live, cfg.settle)
        codes = [await s.stop() for s in slots]
        await drain(mux, server.url, queues=QUEUES, timeout=60, scheduler=False)
        await close_recorders()

        faults.see()
        verdict = await Oracle(
            raw, rec, faults.log, pid_slot=faults.pid_slot, lease_ttl=cfg.lease_ttl
        ).judge()
        await _keep(cfg, rec, faults)
        proxies.cancel_scope.cancel()
    await rec.aclose()
    await raw.aclose()
    if not settled:
        verdict.fail(f"the fleet did not finish the enqueued work within {cfg.settle} s of healing")
    for s, code in zip(slots, codes, strict=True):
        if code != 0:
            verdict.fail(f"slot {s.n}'s final graceful stop ended with {code} (see {s.log})")
    verdict.figures = {
        "seed": cfg.seed,
        "server": f"{cfg.server} ({await _version(server.url)})",
        "fault phase": f"{faulted:.0f} s, then settled in {time.time() - started - faulted:.0f} s",
        "worker slots": f"{cfg.slots} ({cfg.supervised} with --processes 2), "
        f"lease_ttl {cfg.lease_ttl} s",
        "faults": faults.summary(),
        "server restarts": server.restarts,
        "producers": dict(producers.counts),
        **verdict.figures,
    }
    return verdict


async def _keep(cfg: Settings, rec: aioredis.Redis, faults: Faults) -> None:
    """Write the evidence beside the worker logs: the faults and the records."""
    name = f"soak-{cfg.server}-{cfg.seed}"
    (cfg.logs / f"{name}-faults.json").write_bytes(
        msgspec.json.encode({"faults": faults.log, "pid_slot": faults.pid_slot})
    )
    events = await read_events(rec)
    (cfg.logs / f"{name}-events.jsonl").write_bytes(
        b"\n".join(msgspec.json.encode(e) for e in events)
    )


async def _heal(slots: list[Slot], server: ServerUnderTest) -> None:
    if not server.running():
        server.restart("always")
    for s in slots:
        s.proxy.heal()
        for pid in s.all_pids():
            s.signal(pid, signal.SIGCONT)
        if not s.alive():
            s.start()


async def _workers(r: aioredis.Redis, n: int) -> bool:
    return int(await r.zcard(f"{PREFIX}:workers")) >= n


async def _settled(raw: aioredis.Redis, live: set[str], timeout: float) -> bool:
    """Wait until every queue's tasks are final, every flow ended, and the leases of
    the workers that died were reaped (only the ``live`` workers hold one)."""

    async def final() -> bool:
        # Released steps not yet written (a client or worker died between two writes)
        # are finished by the flow pumps' sweep: wait for that too.
        if await raw.scard(f"{PREFIX}:flows:due"):
            return False
        for q in QUEUES:
            k = QueueKeys(PREFIX, q)
            states = await raw.hvals(k.states)
            if any(str(v) not in ("completed", "archived") for v in states):
                return False
            if await raw.llen(k.outbox):
                return False
            if not set(strs(await raw.zrange(k.leases, 0, -1))) <= live:
                return False
        for f in strs(await raw.zrange(f"{PREFIX}:flows", 0, -1)):
            state = await raw.hget(f"{PREFIX}:{{f:{f}}}:meta", "state")
            if str(state) not in ("completed", "failed", "cancelled"):
                return False
        return True

    with anyio.move_on_after(timeout):
        while True:
            if await final():
                return True
            await anyio.sleep(0.5)
    return False


async def _until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    with anyio.move_on_after(timeout):
        while True:
            if await check():
                return
            await anyio.sleep(0.1)
    raise TimeoutError(f"waited {timeout} s for {what}")


async def _version(url: str) -> str:
    r = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        info = await r.info("server")
        return str(info.get("valkey_version") or info.get("redis_version"))
    finally:
        await r.aclose()
