"""The fault schedule: drawn in full from the seed before the run starts, then carried
out on time, several faults at once where their times overlap.

The same seed gives the same schedule (when, what, which slot, for how long); which
task a fault happens to hit is the run's own. A fault whose target is busy with another
fault of its kind (a slot being restarted, a proxy already cut, the server already
down) is skipped and logged as such.

Every fault carried out is logged with the pids it touched and the span of time it
lasted: the oracle accepts a task run twice only when a fault explains it.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass, field

import anyio

from .fleet import Slot
from .servers import ServerUnderTest

# kind -> weight in the schedule
KINDS = {
    "kill": 5,  # SIGKILL a worker process; restarted at once (same id, or a fresh one)
    "term": 2,  # SIGTERM a slot mid-task: graceful shutdown, then restarted
    "stop": 3,  # SIGSTOP a worker process for up to twice the lease, then SIGCONT
    "cut": 2,  # the slot's connections closed, new ones refused
    "stall": 2,  # nothing relayed either way (a partition), nothing closed
    "slow": 2,  # every chunk delayed 50-200 ms, with jitter
    "server": 2,  # the server crashed (fsync always) or stopped (everysec), restarted
}


@dataclass(frozen=True)
class Planned:
    at: float  # seconds after the start
    kind: str
    slot: int
    duration: float
    pick: int  # which of the slot's processes (modulo how many it has)
    fresh_id: bool  # a restart takes a fresh worker id
    fsync: str  # the server's next incarnation's fsync policy


@dataclass
class Done:
    """A fault as it was carried out."""

    kind: str
    slot: int
    t0: float  # time.time() when it began
    t1: float  # when its effect ended (the process resumed, the path healed, ...)
    pids: list[int] = field(default_factory=list)
    detail: str = ""
    skipped: bool = False


def draw(seed: int, seconds: float, slots: int, every: float, lease_ttl: float) -> list[Planned]:
    """The schedule of a run of ``seconds``: a fault every ``every`` seconds on average."""
    rng = random.Random(seed)
    kinds, weights = list(KINDS), list(KINDS.values())
    out: list[Planned] = []
    at = rng.expovariate(1 / every)
    fsync = "always"
    while at < seconds:
        kind = rng.choices(kinds, weights)[0]
        duration = {
            "kill": rng.uniform(0.0, 2.0),  # before the restart
            "term": rng.uniform(0.0, 1.0),
            "stop": rng.uniform(0.5, 2 * lease_ttl),
            "cut": rng.uniform(0.5, 4.0),
            "stall": rng.uniform(1.0, 2 * lease_ttl),
            "slow": rng.uniform(3.0, 10.0),
            "server": rng.uniform(0.5, 3.0),
        }[kind]
        if kind == "server":
            fsync = "everysec" if fsync == "always" else "always"
        out.append(
            Planned(
                at, kind, rng.randrange(slots), duration, rng.randrange(1 << 16),
                rng.random() < 1 / 3, fsync,
            )
        )  # fmt: skip
        at += rng.expovariate(1 / every)
    return out


class Faults:
    """Carries a schedule out against the slots and the server."""

    def __init__(self, slots: list[Slot], server: ServerUnderTest, rng: random.Random) -> None:
        self.slots = slots
        self.server = server
        self.rng = rng
        self.log: list[Done] = []
        self._life_busy: set[int] = set()
        self._net_busy: set[int] = set()
        self._server_busy = False
        # Every process seen in each slot (sampled): a fault on a slot's path hits the
        # processes started in it while the fault lasted too.
        self.pid_slot: dict[int, int] = {}

    async def run(self, plan: list[Planned]) -> None:
        start = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._sample)
            async with anyio.create_task_group() as faults:
                for p in plan:
                    await anyio.sleep(max(0.0, start + p.at - time.monotonic()))
                    faults.start_soon(self._one, p)
            tg.cancel_scope.cancel()

    async def _sample(self) -> None:
        while True:
            self.see()
            await anyio.sleep(0.1)

    def see(self) -> None:
        for s in self.slots:
            for pid in s.all_pids():
                self.pid_slot[pid] = s.n

    async def _one(self, p: Planned) -> None:
        slot = self.slots[p.slot]
        t0 = time.time()
        done = Done(p.kind, p.slot, t0, t0)
        self.log.append(done)
        if p.kind == "server":
            await self._server(p, done)
        elif p.kind in ("cut", "stall", "slow"):
            await self._net(p, slot, done)
        else:
            await self._life(p, slot, done)

    async def _server(self, p: Planned, done: Done) -> None:
        if self._server_busy:
            done.skipped = True
            return
        self._server_busy = True
        try:
            how = self.server.down()
            await anyio.sleep(p.duration)
            await anyio.to_thread.run_sync(self.server.restart, p.fsync)
            done.detail = f"{how} (was fsync {'always' if how == 'SIGKILL' else 'everysec'}), "
            done.detail += f"back with fsync {p.fsync}"
        finally:
            done.t1 = time.time()
            self._server_busy = False

    async def _net(self, p: Planned, slot: Slot, done: Done) -> None:
        if p.slot in self._net_busy:
            done.skipped = True
            return
        self._net_busy.add(p.slot)
        done.pids = slot.all_pids()
        try:
            if p.kind == "cut":
                slot.proxy.cut()
            elif p.kind == "stall":
                slot.proxy.stall()
            else:
                delay = self.rng.uniform(0.05, 0.2)
                slot.proxy.slow(delay, self.rng.uniform(0.0, 0.05))
                done.detail = f"{delay * 1000:.0f} ms"
            await anyio.sleep(p.duration)
        finally:
            slot.proxy.heal()
            done.t1 = time.time()
            self._net_busy.discard(p.slot)

    async def _life(self, p: Planned, slot: Slot, done: Done) -> None:
        pids = slot.pids()
        if p.slot in self._life_busy or not pids:
            done.skipped = True
            return
        self._life_busy.add(p.slot)
        pid = pids[p.pick % len(pids)]
        try:
            if p.kind == "stop":
                done.pids = [pid]
                slot.signal(pid, signal.SIGSTOP)
                await anyio.sleep(p.duration)
                slot.signal(pid, signal.SIGCONT)
            elif p.kind == "kill":
                done.pids = [pid]
                slot.signal(pid, signal.SIGKILL)
                if slot.processes == 1:  # a supervisor restarts its own children
                    await slot.exit(10)
                    await anyio.sleep(p.duration)
                    slot.start(fresh_id=p.fresh_id)
                    done.detail = f"restarted as {slot.worker_id}"
            else:  # term: the whole slot (a supervisor passes it to its children)
                done.pids = slot.all_pids()
                assert slot.popen is not None
                slot.signal(slot.popen.pid, signal.SIGTERM)
                code = await slot.exit(30)
                done.detail = f"exit code {code}"
                if code is None:  # never: a graceful stop must end
                    done.detail = "did not exit within 30 s of SIGTERM; killed"
                    for q in slot.all_pids():
                        slot.signal(q, signal.SIGKILL)
                    await slot.exit(10)
                await anyio.sleep(p.duration)
                slot.start()
        finally:
            done.t1 = time.time()
            self._life_busy.discard(p.slot)

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.log:
            key = d.kind + (" (skipped)" if d.skipped else "")
            out[key] = out.get(key, 0) + 1
        return out
