"""Scaling workloads: more worker processes, and more cluster masters.

``processes_*``: the real ``aqueue worker --processes P`` (CLI and supervisor, as a
subprocess) drains a backlog written before it starts, for P = 1, 2 and 4; the baseline
is P = 1 in the same run. Two handlers: a no-op, where the framework and the server are
the whole cost, and about 1 ms of pure-Python CPU, where the handler is.

``cluster``: the same drain (``CLUSTER_PROCESSES`` worker processes, 12 queues weighted
equally) against a 3-master Valkey cluster and, as the baseline, a 1-master cluster (the
same ``redis+cluster://`` client path, so the ratio is the number of masters alone).
Both clusters are started by the workload. A queue lives in one slot, so the queues are
chosen by name to put 4 on each master; a plain server's figure comes along for scale.

The clock of a drain runs from the moment every worker process is up to the server's
processed count reaching N. Interpreter start-up and imports are left out, as
``drain``'s clock leaves them out: the handlers wait at a gate (see ``scale_app``) that
opens once every worker has registered with the server. The wall rate from starting the
supervisor is kept too. The supervisor then gets SIGTERM and must exit 0, and the
server must have counted exactly N tasks.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio
import redis
import redis.asyncio as aioredis
from anyio.abc import Process
from redis.crc import key_slot

import aqueue
from aqueue._redis.broker import DEFAULT_PREFIX
from aqueue._redis.keys import queue_keys, workers_key
from aqueue.server import EmbeddedServer, free_port

from .common import ROOT, Bench, Result
from .scale_app import GATE_ENV, burn, cpu, noop

PROCESSES = (1, 2, 4)
CONCURRENCY = 100
APP = "benchmarks.scale_app:mux"
POLL = 0.005
BATCH = 1000

CLUSTER_PROCESSES = 2
CLUSTER_QUEUES = 12
MASTERS = 3
CLUSTER_FLAGS = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "2000"]  # fmt: skip
ALL_SLOTS = 16384

# The one warning every worker logs on the suite's throwaway servers.
EXPECTED_LOG = "the server keeps nothing on disk"


class Target:
    """A server or a cluster to drain on: the workers' URL and a plain client per
    master, to read the progress where the keys live."""

    def __init__(self, url: str, nodes: Sequence[aioredis.Redis]) -> None:
        self.url = url
        self.nodes = list(nodes)
        # Each master's first slot (``cluster`` shares them evenly); a plain server
        # holds every slot.
        self.firsts = [i * ALL_SLOTS // len(nodes) for i in range(len(nodes))]

    def node_of(self, key: str) -> int:
        """Index of the master holding ``key``."""
        slot = key_slot(key.encode())
        return max(i for i, first in enumerate(self.firsts) if first <= slot)

    async def flush(self) -> None:
        for node in self.nodes:
            await node.execute_command("FLUSHALL", "SYNC")  # type: ignore[no-untyped-call]

    async def progress(self, queues: Sequence[str]) -> tuple[int, int]:
        """The queues' processed total and the number of registered workers."""
        registry = workers_key(DEFAULT_PREFIX)
        stats = [queue_keys(DEFAULT_PREFIX, q).stats for q in queues]
        processed = workers = 0
        for i, node in enumerate(self.nodes):
            mine = [k for k in stats if self.node_of(k) == i]
            count = self.node_of(registry) == i
            if not mine and not count:
                continue
            pipe = node.pipeline(transaction=False)
            for k in mine:
                pipe.hget(k, "p")
            if count:
                pipe.zcard(registry)
            replies = await pipe.execute()
            if count:
                workers = int(replies.pop())
            processed += sum(int(r or 0) for r in replies)
        return processed, workers

    async def cpu_seconds(self) -> float:
        """CPU time the server processes have used so far (all masters together)."""
        total = 0.0
        for node in self.nodes:
            info = await node.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return total

    async def aclose(self) -> None:
        for node in self.nodes:
            await node.aclose()


@contextmanager
def clusters(*sizes: int) -> Iterator[list[Target]]:
    """One cluster per size, of that many cluster-mode Valkey masters sharing the slots
    evenly, formed with CLUSTER ADDSLOTSRANGE and MEET.

    A master reports ``cluster_state:ok`` no sooner than 2 s after it started, so every
    server starts first and all the clusters form during the same wait.
    """
    buses = [[free_port() for _ in range(size)] for size in sizes]
    servers = [
        [EmbeddedServer(extra=[*CLUSTER_FLAGS, "--cluster-port", str(bus)]) for bus in group]
        for group in buses
    ]
    everyone = [s for group in servers for s in group]
    try:
        for s in everyone:
            s.start()
        nodes = [redis.Redis(port=s.port) for s in everyone]
        targets = []
        i = 0
        for group, group_buses in zip(servers, buses, strict=True):
            first_node = nodes[i]
            for j, s in enumerate(group):
                lo, hi = j * ALL_SLOTS // len(group), (j + 1) * ALL_SLOTS // len(group) - 1
                _command(nodes[i + j], "CLUSTER", "ADDSLOTSRANGE", lo, hi)
                if j:
                    _command(first_node, "CLUSTER", "MEET", "127.0.0.1", s.port, group_buses[j])
            i += len(group)
            url = "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in group)
            targets.append(Target(url, [aioredis.Redis(port=s.port) for s in group]))
        deadline = time.monotonic() + 30
        while not all(b"cluster_state:ok" in _command(n, "CLUSTER", "INFO") for n in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"clusters of {sizes} masters did not form within 30 s")
            time.sleep(0.05)
        for n in nodes:
            n.close()
        yield targets
    finally:
        for s in everyone:
            s.close()


def _command(node: redis.Redis, *args: str | int) -> Any:
    return node.execute_command(*args)  # type: ignore[no-untyped-call]


def spread(target: Target, count: int) -> list[str]:
    """``count`` queue names, the same number on each master of ``target``."""
    per = count // len(target.nodes)
    taken = [0] * len(target.nodes)
    names: list[str] = []
    i = 0
    while len(names) < count:
        name = f"q{i}"
        node = target.node_of(queue_keys(DEFAULT_PREFIX, name).stats)
        if taken[node] < per:
            taken[node] += 1
            names.append(name)
        i += 1
    return names


async def fill(
    url: str, n: int, handler: aqueue.Handler[None, None], queues: Sequence[str]
) -> None:
    """``n`` tasks, shared evenly over ``queues``, written before any worker starts."""
    async with aqueue.Client(url) as client:
        for j, q in enumerate(queues):
            count = n // len(queues) + (j < n % len(queues))
            for lo in range(0, count, BATCH):
                jobs = [aqueue.Job(handler, queue=q) for _ in range(min(BATCH, count - lo))]
                await client.enqueue_many(jobs)


@dataclass
class Drain:
    """What one drain measured."""

    rate: float  # tasks/s from opening the gate (every worker up) to the N-th ack
    wall: float  # tasks/s from starting the supervisor to the N-th ack
    startup: float  # seconds from starting the supervisor to opening the gate
    worker_cores: float  # worker processes' CPU seconds per second over the timed window
    server_cores: float  # the same for the server (every master)
    machine_busy: float  # share of all the machine's cores busy then (anyone's work)


def machine_ticks() -> tuple[int, int]:
    """Busy and total CPU ticks of the whole machine so far (Linux ``/proc/stat``), or
    zeros where there is no such file."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def children_cpu(pid: int) -> float:
    """CPU seconds used so far by the live children of ``pid`` (the supervisor's worker
    processes), from Linux ``/proc``; 0 where there is none."""
    total = 0
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                # Fields after the command name, which may hold spaces: state, ppid, ...
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Mark:
    """What the clock and the CPU counters read at one moment of a drain."""

    at: float
    processed: int
    worker_cpu: float
    server_cpu: float
    ticks: tuple[int, int]

    @classmethod
    async def take(cls, target: Target, process: Process, processed: int) -> Mark:
        at, workers = time.perf_counter(), children_cpu(process.pid)
        return cls(at, processed, workers, await target.cpu_seconds(), machine_ticks())


async def drain(target: Target, n: int, processes: int, queues: Sequence[str]) -> Drain:
    """Run ``aqueue worker --processes P`` until the server has counted ``n`` processed
    tasks, then stop it with SIGTERM; it must exit 0 having processed exactly ``n``."""
    argv = [sys.executable, "-m", "aqueue._cli", "worker", APP, "--url", target.url,
            "--processes", str(processes), "--concurrency", str(CONCURRENCY),
            "--log-level", "WARNING"]  # fmt: skip
    for q in queues:
        argv += ["--queue", f"{q}=1"]
    with (
        tempfile.TemporaryDirectory(prefix="aqueue-bench-") as tmp,
        tempfile.TemporaryFile() as log,
    ):
        gate = Path(tmp) / "go"
        env = {**os.environ, GATE_ENV: str(gate)}
        process = await anyio.open_process(argv, cwd=ROOT, stdout=log, stderr=log, env=env)
        try:
            result = await _watch(target, n, processes, queues, process, gate)
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(60):
                code = await process.wait()
        except Exception as exc:
            await _stop(process)
            lines = _unexpected(log)
            raise RuntimeError(f"{exc}; the workers logged:\n" + "\n".join(lines)) from exc
        finally:
            await _stop(process)
        lines = _unexpected(log)
    if code != 0:
        raise RuntimeError(f"the supervisor exited {code} after SIGTERM:\n" + "\n".join(lines))
    for line in lines:
        print(line, file=sys.stderr)
    processed, _ = await target.progress(queues)
    if processed != n:
        raise RuntimeError(f"the server counted {processed} processed tasks, not {n}")
    return result


async def _watch(
    target: Target, n: int, processes: int, queues: Sequence[str], process: Process, gate: Path
) -> Drain:
    """Open the gate once every worker process has registered, then time the drain."""
    start = await Mark.take(target, process, 0)
    go: Mark | None = None
    with anyio.fail_after(60 + n / 200):
        while True:
            processed, workers = await target.progress(queues)
            if go is None and workers >= processes:
                if processed:
                    raise RuntimeError(f"{processed} tasks ran before the gate opened")
                await anyio.Path(gate).touch()
                go = await Mark.take(target, process, 0)
            if processed >= n:
                break
            if process.returncode is not None:
                raise RuntimeError(f"the supervisor exited early (code {process.returncode})")
            await anyio.sleep(POLL)
    end = await Mark.take(target, process, processed)
    assert go is not None  # nothing runs before the gate opens
    seconds = end.at - go.at
    busy, total = (e - g for e, g in zip(end.ticks, go.ticks, strict=True))
    return Drain(
        rate=end.processed / seconds,
        wall=n / (end.at - start.at),
        startup=go.at - start.at,
        worker_cores=(end.worker_cpu - go.worker_cpu) / seconds,
        server_cores=(end.server_cpu - go.server_cpu) / seconds,
        machine_busy=busy / total if total else 0.0,
    )


async def _stop(process: Process) -> None:
    """Leave no worker behind when a drain failed: SIGTERM, then SIGKILL (the children
    get SIGTERM from the kernel when the supervisor dies). Nothing if it has exited."""
    if process.returncode is not None:
        return
    with anyio.CancelScope(shield=True):
        process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(30):
            await process.wait()
            return
        process.kill()
        await process.wait()


def _unexpected(log: IO[bytes]) -> list[str]:
    """The worker log's lines, minus the expected warning about a server without disk."""
    log.seek(0)
    lines = log.read().decode(errors="replace").splitlines()
    return [line for line in lines if line.strip() and EXPECTED_LOG not in line]


async def interleave(
    b: Bench, runs: dict[str, Callable[[], Awaitable[Drain]]]
) -> dict[str, list[Drain]]:
    """``repeat`` rounds of every run, in the given order and then reversed, so a slow
    spell of the machine or a drift in one direction hits every run alike."""
    out: dict[str, list[Drain]] = {name: [] for name in runs}
    for i in range(b.repeat):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))
        for name in order:
            out[name].append(await runs[name]())
    return out


def median(drains: Sequence[Drain], field: str) -> float:
    return statistics.median(float(getattr(d, field)) for d in drains)


def load(mine: Sequence[Drain], base: Sequence[Drain]) -> dict[str, float]:
    """Where the CPU went, in cores, for both: what says whether the workers, the server
    or the machine was the limit. ``other`` is the rest of the machine's busy time:
    other people's jobs, and this process polling the server (about 0.05 cores)."""
    out: dict[str, float] = {}
    for prefix, drains in (("", mine), ("baseline_", base)):
        workers, server = median(drains, "worker_cores"), median(drains, "server_cores")
        out[f"{prefix}worker_cores"] = workers
        out[f"{prefix}server_cores"] = server
        busy = median(drains, "machine_busy") * (os.cpu_count() or 1)
        if busy:  # not on a machine without /proc/stat
            out[f"{prefix}other_cores"] = max(busy - workers - server, 0.0)
    return out


# -- processes -----------------------------------------------------------------------


async def _process_runs(b: Bench, kind: str) -> dict[str, Any]:
    """Drains with 1, 2 and 4 worker processes, memoized for the rows of each count."""
    key = f"processes_{kind}"  # drain's runs are memoized as "noop"
    if key in b.memo:
        memo: dict[str, Any] = b.memo[key]
        return memo
    handler, n = (noop, b.n(20_000)) if kind == "noop" else (cpu, b.n(3_000))
    target = Target(b.url, [b.redis()])

    def run(p: int) -> Callable[[], Awaitable[Drain]]:
        async def go() -> Drain:
            await target.flush()
            await fill(b.url, n, handler, ["default"])
            return await drain(target, n, p, ["default"])

        return go

    try:
        drains = await interleave(b, {str(p): run(p) for p in PROCESSES})
    finally:
        await target.aclose()
    memo = {"n": n, "drains": {int(p): d for p, d in drains.items()}}
    if kind == "cpu":
        start = time.process_time()
        for _ in range(200):
            burn()
        memo["cpu_ms"] = (time.process_time() - start) / 200 * 1000
    b.memo[key] = memo
    return memo


async def _processes(b: Bench, kind: str, p: int) -> Result:
    runs = await _process_runs(b, kind)
    one, mine = runs["drains"][1], runs["drains"][p]
    extra = {
        "wall_ratio": median(mine, "wall") / median(one, "wall"),
        "startup_s": median(mine, "startup"),
        "baseline_startup_s": median(one, "startup"),
        **load(mine, one),
    }
    about = "no-op tasks"
    if kind == "cpu":
        extra["cpu_ms"] = runs["cpu_ms"]
        about = f"{runs['cpu_ms']:.1f} ms CPU tasks"
    suffix = "" if kind == "noop" else "_cpu"
    return Result(
        f"processes{suffix}_{p}",
        runs["n"],
        "jobs/s",
        median(mine, "rate"),
        median(one, "rate"),
        f"--processes 1, {about}",
        "higher",
        extra=extra,
    )


async def processes_2(b: Bench) -> Result:
    return await _processes(b, "noop", 2)


async def processes_4(b: Bench) -> Result:
    return await _processes(b, "noop", 4)


async def processes_cpu_2(b: Bench) -> Result:
    return await _processes(b, "cpu", 2)


async def processes_cpu_4(b: Bench) -> Result:
    return await _processes(b, "cpu", 4)


# -- cluster -------------------------------------------------------------------------


async def cluster_masters(b: Bench) -> Result:
    n = b.n(24_000, minimum=CLUSTER_QUEUES * 10)
    p = CLUSTER_PROCESSES
    with clusters(MASTERS, 1) as (three, one):
        queues = spread(three, CLUSTER_QUEUES)
        placed = {q: three.node_of(queue_keys(DEFAULT_PREFIX, q).stats) + 1 for q in queues}
        print(
            "  queues by master: "
            + ", ".join(f"{q}->{m}" for q, m in sorted(placed.items(), key=lambda x: x[1])),
            file=sys.stderr,
            flush=True,
        )
        plain = Target(b.url, [b.redis()])

        def run(target: Target) -> Callable[[], Awaitable[Drain]]:
            async def go() -> Drain:
                await target.flush()
                await fill(target.url, n, noop, queues)
                return await drain(target, n, p, queues)

            return go

        try:
            drains = await interleave(
                b, {"one": run(one), "three": run(three), "plain": run(plain)}
            )
        finally:
            for t in (three, one, plain):
                await t.aclose()
    extra = {
        "queues": float(len(queues)),
        "processes": float(p),
        "plain_jobs_s": median(drains["plain"], "rate"),
        **load(drains["three"], drains["one"]),
    }
    for m in range(1, MASTERS + 1):
        extra[f"queues_on_master_{m}"] = float(sum(v == m for v in placed.values()))
    return Result(
        "cluster",
        n,
        "jobs/s",
        median(drains["three"], "rate"),
        median(drains["one"], "rate"),
        f"1-master cluster, --processes {p}, {len(queues)} queues",
        "higher",
        extra=extra,
    )
