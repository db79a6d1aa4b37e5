"""A worker killed mid-run, at each system's default settings (issue 18): ``crash_defaults``.

500 jobs (at scale 1) that each take 2 s are enqueued, and one worker process with 50
slots works through them with the system's defaults for everything else: aqueue's
``lease_ttl`` of 30 s, arq's in-progress keys, SAQ's sweep and job timeout, the idle
time after which streaq and taskiq claim a stream entry again. Once 100 jobs have
finished (two rounds of the slots) and 50 are running, half a job later, the worker is
SIGKILLed and, as soon as it is gone, a new worker process starts on the same host.

The figures: seconds from that restart to the last job finished (the 400 jobs left,
the 50 killed among them, take 16 s on 50 slots), jobs lost (not finished ``CAP``
seconds after the restart) and jobs finished twice or more. The jobs count themselves,
on the benchmark's server (``kit.Ledger``), whatever the system reports; after the last
one the new worker runs a job's length more, so that a second run of a finished job
already under way counts.

aqueue's worker is its CLI, ``aqueue worker benchmarks.peers.adapter_aqueue:mux
--concurrency 50``; a peer's is the driver's ``crash_serve``: its adapter's worker, which
differs from the peer's defaults in the concurrency, the probe's hooks and (arq,
streaq) signal handlers left off, none of which bears on what happens after a SIGKILL.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import anyio
import redis.asyncio as aioredis
from anyio.abc import Process

from ..common import ROOT
from .harness import ChildFailed, Run, System, command, failure
from .kit import Ledger
from .report import AQUEUE, Figure

JOBS = 500
JOB_SECONDS = 2.0
CAP = 120.0  # seconds after the restart: what is not done by then counts as lost
POLL = 0.02


@dataclass(frozen=True)
class Plan:
    """The workload's sizes at a scale: at 1 the figures above; smaller for smoke runs
    (at least 20 jobs, 2 slots, 0.2 s jobs), in the same proportions."""

    jobs: int
    concurrency: int
    job_seconds: float
    cap: float

    @classmethod
    def at(cls, run: Run) -> Plan:
        jobs = run.bench.n(JOBS, minimum=20)
        scale = min(1.0, run.bench.scale)
        return cls(jobs, max(2, jobs // 10), JOB_SECONDS * max(0.1, scale), max(45.0, CAP * scale))

    @property
    def kill_after(self) -> int:
        """Jobs finished before the kill: two rounds of the slots."""
        return 2 * self.concurrency


@dataclass(frozen=True)
class Tally:
    """What the jobs wrote to the ledger: how many started, how often each finished."""

    started: int
    finished: dict[str, int]

    @property
    def running(self) -> int:
        return self.started - sum(self.finished.values())

    @classmethod
    async def read(cls, r: aioredis.Redis) -> Tally:
        started, finished = await r.get(Ledger.STARTED), await r.hgetall(Ledger.DONE)
        return cls(int(started or 0), {str(k): int(v) for k, v in finished.items()})


async def crash_defaults(run: Run, s: System, _: int) -> Figure:
    plan = Plan.at(run)
    await run.child(s, "crash_fill", run.url, plan.jobs, timeout=60 + plan.jobs / 20)
    env = {
        **os.environ,
        Ledger.URL_ENV: run.url,
        Ledger.SECONDS_ENV: str(plan.job_seconds),
    }
    procs: list[Process] = []
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as err2:
        try:
            async with aioredis.Redis.from_url(run.url) as r:
                procs.append(await _start(s, run.url, plan.concurrency, env, err))
                before = plan.kill_after / plan.concurrency * plan.job_seconds
                with anyio.fail_after(60 + 3 * before):
                    await _until(r, procs[0], s, err, lambda t: _full(t, plan))
                await anyio.sleep(plan.job_seconds / 2)  # mid-job
                at_kill = await Tally.read(r)
                procs[0].kill()
                await procs[0].wait()  # reaped: its pid is gone, as after a real crash
                restart = time.monotonic()
                procs.append(await _start(s, run.url, plan.concurrency, env, err2))
                with anyio.move_on_after(plan.cap):
                    await _until(r, procs[1], s, err2, lambda t: len(t.finished) >= plan.jobs)
                last = time.monotonic() - restart
                if last < plan.cap:
                    await anyio.sleep(plan.job_seconds)  # a second run under way ends
                end = await Tally.read(r)
        finally:
            for p in procs:
                if p.returncode is None:
                    p.kill()
                    await p.wait()
    lost = plan.jobs - len(end.finished)
    extra = {
        "lost": float(lost),
        "twice": float(sum(1 for k in end.finished.values() if k >= 2)),
        "done_at_kill": float(len(at_kill.finished)),
        "running_at_kill": float(at_kill.running),
        "concurrency": float(plan.concurrency),
        "job_s": plan.job_seconds,
    }
    if lost:
        extra["cap"] = plan.cap
    return Figure(s.name, "crash_defaults", plan.jobs, None if lost else last, extra)


def _full(t: Tally, plan: Plan) -> bool:
    """Two rounds finished, and every slot busy with a third."""
    return len(t.finished) >= plan.kill_after and t.running >= plan.concurrency


async def _start(
    s: System, url: str, concurrency: int, env: dict[str, str], err: IO[bytes]
) -> Process:
    if s.name == AQUEUE:
        cli = str(Path(s.python).parent / "aqueue")
        argv = [cli, "worker", "benchmarks.peers.adapter_aqueue:mux",
                "--url", url, "--concurrency", str(concurrency)]  # fmt: skip
    else:
        argv = command(s, "crash_serve", url, concurrency)
    return await anyio.open_process(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)


async def _until(
    r: aioredis.Redis, proc: Process, s: System, err: IO[bytes], done: Callable[[Tally], bool]
) -> None:
    """Poll the ledger until ``done``; fail at once if the worker process ends."""
    while not done(await Tally.read(r)):
        if proc.returncode is not None:
            raise ChildFailed(failure(s, ("crash worker",), proc.returncode, err))
        await anyio.sleep(POLL)
