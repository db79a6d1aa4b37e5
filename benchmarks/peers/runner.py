"""``python -m benchmarks.peers [--scale 1] [--only NAME ...] [--peers NAME ...]
[--no-peers] [--repeat 1] [--json] [--list] [--upgrade]``.

Makes sure each chosen peer's environment exists (``envs``), starts one embedded
Valkey server, and runs each workload for aqueue and every peer in turn, on an emptied
server each time, every producer and worker in a child process of the system's own
interpreter (``child``). Prints one JSON line per (system, workload) as each workload
finishes and, unless ``--json``, a side-by-side table at the end; progress goes to
stderr. Exit status: 0 when everything ran, 1 when a system failed a workload or its
environment could not be made, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from aqueue.server import EmbeddedServer

from ..cli import server_version
from ..common import ROOT, Bench, percentile
from . import envs
from .crash import crash_defaults
from .harness import MAX_LINE, ChildFailed, Run, System, command, failure, last_json
from .report import AQUEUE, Figure, Metric, as_dict, combine, table
from .web import web_signup

CONCURRENCY = 100  # one worker process, 100 jobs at a time, for every system
LATENCY_SECONDS = 3.0  # per rate at scale 1, as in the aqueue suite


Workload = Callable[[Run, System, int], Awaitable[Figure]]


async def enqueue_serial(run: Run, s: System, _: int) -> Figure:
    n = run.bench.n(5_000)
    out = await run.child(s, "enqueue", "serial", run.url, n, timeout=60 + n / 100)
    return Figure(s.name, "enqueue_serial", n, out["rate"])


async def enqueue_gather(run: Run, s: System, _: int) -> Figure:
    n = run.bench.n(10_000)
    out = await run.child(s, "enqueue", "gather", run.url, n, timeout=60 + n / 100)
    return Figure(s.name, "enqueue_gather", n, out["rate"])


async def enqueue_batch(run: Run, s: System, _: int) -> Figure:
    n = run.bench.n(50_000, minimum=1000)
    if s.batch_api is None:
        return Figure(s.name, "enqueue_batch", n, None, note="no batch enqueue API")
    out = await run.child(s, "enqueue", "batch", run.url, n, timeout=60 + n / 500)
    return Figure(s.name, "enqueue_batch", n, out["rate"], note=s.batch_api)


async def backlog(run: Run, s: System, round_: int) -> dict[str, float]:
    """Enqueue N no-op jobs, read the server's memory, drain them with one worker.

    Memoized per round so that ``drain_noop``, ``worker_rss`` and ``server_memory``
    report the same runs.
    """
    key = (s.name, round_)
    if key in run.backlogs:
        return run.backlogs[key]
    n = run.bench.n(20_000)
    # One job first loads the system's Lua scripts or functions: they survive FLUSHALL
    # and are no pending job's cost, so they belong in the reading before.
    await run.child(s, "fill", run.url, 1, timeout=60)
    await run.bench.flush()
    before = await run.used_memory()
    await run.child(s, "fill", run.url, n, timeout=60 + n / 200)
    after = await run.used_memory()
    limit = 60 + n / 100
    report = await run.child(s, "drain", run.url, n, CONCURRENCY, limit, timeout=limit + 30)
    figures = {"n": n, "bytes_per_job": (after - before) / n, **report}
    run.backlogs[key] = figures
    return figures


async def drain_noop(run: Run, s: System, round_: int) -> Figure:
    b = await backlog(run, s, round_)
    return Figure(s.name, "drain_noop", int(b["n"]), b["n"] / b["seconds"])


async def worker_rss(run: Run, s: System, round_: int) -> Figure:
    b = await backlog(run, s, round_)
    return Figure(
        s.name, "worker_rss", int(b["n"]), b["rss_peak_mb"], {"idle_mb": b["rss_idle_mb"]}
    )


async def server_memory(run: Run, s: System, round_: int) -> Figure:
    b = await backlog(run, s, round_)
    return Figure(s.name, "server_memory", int(b["n"]), b["bytes_per_job"])


async def latency(run: Run, s: System, rate: int) -> Figure:
    """A worker waits; a producer enqueues N jobs at ``rate``/s on a fixed schedule;
    the worker reports each job's enqueue-to-handler-start time."""
    n = max(10, round(rate * LATENCY_SECONDS * run.bench.scale))
    limit = n / rate + 30
    serve = command(s, "serve", run.url, n, limit)
    produce = command(s, "produce", run.url, n, rate)
    with tempfile.TemporaryFile() as err, anyio.fail_after(limit + 30):
        async with (
            await anyio.open_process(serve, cwd=ROOT, stderr=err) as worker,
            await anyio.open_process(produce, cwd=ROOT, stderr=err) as producer,
        ):
            assert worker.stdout is not None and producer.stdin is not None
            out = BufferedByteReceiveStream(worker.stdout)
            try:
                ready = await out.receive_until(b"\n", MAX_LINE)
                if ready != b"ready":
                    raise ChildFailed(f"{s.name}'s latency worker said {ready!r}, not ready")
                await producer.stdin.send(b"go\n")
                if await producer.wait() != 0:
                    raise ChildFailed(failure(s, ("produce",), producer.returncode, err))
                line = await out.receive_until(b"\n", MAX_LINE)
                if await worker.wait() != 0:
                    raise ChildFailed(failure(s, ("serve",), worker.returncode, err))
            except (anyio.EndOfStream, anyio.IncompleteRead):
                code = await worker.wait()
                raise ChildFailed(failure(s, ("serve",), code, err)) from None
            except BaseException:
                for proc in (worker, producer):
                    if proc.returncode is None:
                        proc.kill()
                raise
    latencies: list[float] = last_json(line, s, ("serve",))["latencies_ms"]
    return Figure(
        s.name,
        f"latency_{rate}",
        n,
        percentile(latencies, 50),
        {"p99_ms": percentile(latencies, 99), "max_ms": max(latencies)},
    )


async def latency_100(run: Run, s: System, _: int) -> Figure:
    return await latency(run, s, 100)


async def latency_500(run: Run, s: System, _: int) -> Figure:
    return await latency(run, s, 500)


# In run order, with the aqueue suite's names where the workload is the same.
WORKLOADS: dict[str, tuple[Workload, Metric, str]] = {
    "enqueue_serial": (enqueue_serial, Metric("jobs/s", "higher"), "enqueue, one await at a time"),
    "enqueue_gather": (enqueue_gather, Metric("jobs/s", "higher"), "enqueue, gather of 1000"),
    "enqueue_batch": (enqueue_batch, Metric("jobs/s", "higher"), "batch enqueue API, by 1000"),
    "drain_noop": (
        drain_noop,
        Metric("jobs/s", "higher"),
        "one worker (concurrency 100) drains pre-enqueued no-op jobs",
    ),
    "latency_100": (latency_100, Metric("ms", "lower"), "enqueue-to-start latency at 100/s"),
    "latency_500": (latency_500, Metric("ms", "lower"), "enqueue-to-start latency at 500/s"),
    "worker_rss": (worker_rss, Metric("MB", "lower"), "worker peak RSS (VmHWM) over the drain"),
    "server_memory": (
        server_memory,
        Metric("bytes/job", "lower"),
        "server used_memory per pending no-op job",
    ),
    "crash_defaults": (
        crash_defaults,
        Metric("s", "lower", (("lost", "lost {}"), ("twice", "twice {}"))),
        "defaults: a worker SIGKILLed holding 50 2 s jobs, a new one started at once; "
        "seconds to the last job, jobs lost, jobs run twice",
    ),
    "web_signup": (
        web_signup,
        Metric(
            "req/s",
            "higher",
            (
                ("req_p50_ms", "p50 {}"),
                ("req_p99_ms", "p99 {} ms"),
                ("cpu_us", "{} µs CPU/req"),
                ("alone_rps", "no enqueue {}"),
            ),
        ),
        "FastAPI POST /signup enqueuing one job, uvicorn (1 process), 50 connections",
    ),
}
METRICS = {name: metric for name, (_, metric, _) in WORKLOADS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers",
        description="aqueue's benchmark workloads for aqueue, arq, SAQ, streaq and taskiq "
        "on one embedded Valkey server in one run; each peer in its own virtual "
        "environment under .bench-venvs/.",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every workload's size (default 1)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="run only these workloads; a prefix selects several (--only enqueue latency)",
    )
    parser.add_argument(
        "--peers",
        nargs="+",
        action="extend",
        metavar="PEER",
        help=f"compare with these peers only (default all: {', '.join(envs.PEERS)})",
    )
    parser.add_argument("--no-peers", action="store_true", help="aqueue alone (a smoke run)")
    parser.add_argument(
        "--here",
        action="store_true",
        help="run aqueue with this interpreter, not in .bench-venvs/aqueue/ (core "
        "dependencies only, the default): for smoke runs, not for figures",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each workload per system; the median"
    )
    parser.add_argument("--json", action="store_true", help="JSON lines only, no table")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    parser.add_argument(
        "--upgrade", action="store_true", help="move every peer to its latest release first"
    )
    args = parser.parse_args(argv)
    if args.list:
        for name, (_, _, about) in WORKLOADS.items():
            print(f"{name:16} {about}")
        return 0
    if not args.scale > 0:
        parser.error(f"--scale must be > 0, got {args.scale}")
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    try:
        names = select(args.only)
        peers = [] if args.no_peers else select_peers(args.peers)
    except ValueError as exc:
        parser.error(str(exc))
    web = "web_signup" in names
    systems, broken = prepare(peers, upgrade=args.upgrade, here=args.here, web=web)
    started = time.perf_counter()
    with EmbeddedServer() as server:
        run = Run(Bench(server.url, scale=args.scale, repeat=args.repeat))
        grid, failed, version = anyio.run(run_all, run, systems, names)
    minutes, seconds = divmod(round(time.perf_counter() - started), 60)
    print(f"done in {minutes} min {seconds} s", file=sys.stderr, flush=True)
    if not args.json:
        print()
        header = describe(version, run, systems)
        print(table(grid, METRICS, {s.name: _heading(s) for s in systems}, header))
    return 1 if failed or broken else 0


def select(only: Sequence[str] | None) -> list[str]:
    """The workloads to run, in suite order: all, or those named or prefixed by ``only``."""
    if not only:
        return list(WORKLOADS)
    for name in only:
        if not any(w == name or w.startswith(name) for w in WORKLOADS):
            raise ValueError(f"no workload named {name!r}; choose from {', '.join(WORKLOADS)}")
    return [w for w in WORKLOADS if any(w == name or w.startswith(name) for name in only)]


def select_peers(chosen: Sequence[str] | None) -> list[str]:
    """The peers to compare with, in the report's order."""
    if not chosen:
        return list(envs.PEERS)
    for name in chosen:
        if name not in envs.PEERS:
            raise ValueError(f"no peer named {name!r}; choose from {', '.join(envs.PEERS)}")
    return [p for p in envs.PEERS if p in chosen]


def prepare(
    peers: Sequence[str], *, upgrade: bool, here: bool = False, web: bool = False
) -> tuple[list[System], list[str]]:
    """aqueue and each peer whose environment is ready, and the peers that are not;
    with ``web``, each one's web environment too (``System.web_python``)."""
    pythons: dict[str, Path] = {AQUEUE: Path(sys.executable)} if here else {}
    broken: list[str] = []
    for peer in [*([] if here else [AQUEUE]), *peers]:
        try:
            pythons[peer] = envs.ensure(peer, upgrade=upgrade)
        except envs.EnvError as exc:
            print(f"skipping {peer}: {exc}", file=sys.stderr, flush=True)
            broken.append(peer)
    systems: list[System] = []
    for name, py in pythons.items():
        info_command = [str(py), "-m", "benchmarks.peers.child", name, "info"]
        done = subprocess.run(info_command, cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"skipping {name}: {done.stderr.strip()[-2000:]}", file=sys.stderr)
            broken.append(name)
            continue
        info = json.loads(done.stdout.splitlines()[-1])
        system = System(name, str(py), info["versions"], info["batch_api"])
        if web:
            _prepare_web(system, here=here and name == AQUEUE)
        systems.append(system)
    return systems, broken


def _prepare_web(system: System, *, here: bool) -> None:
    """Make ``system``'s web environment; a failure fails its web workload alone."""
    if here:  # this interpreter: the project's .venv has the web stack
        system.web_python = sys.executable
        return
    try:
        system.web_python = str(envs.ensure(system.name, web=True))
    except envs.EnvError as exc:
        print(f"no web_signup for {system.name}: {exc}", file=sys.stderr, flush=True)
        system.web_error = str(exc).splitlines()[0]


async def run_all(
    run: Run, systems: Sequence[System], names: Sequence[str]
) -> tuple[dict[str, list[Figure]], list[str], str]:
    """Each workload for every system (interleaved per round, so that a slow spell of
    the machine hits them alike); the figures, what failed, the server's version."""
    grid: dict[str, list[Figure]] = {}
    failed: list[str] = []
    for i, name in enumerate(names, 1):
        fn, metric, about = WORKLOADS[name]
        print(f"[{i}/{len(names)}] {name}: {about}", file=sys.stderr, flush=True)
        runs: dict[str, list[Figure]] = {s.name: [] for s in systems}
        errors: dict[str, str] = {}
        for round_ in range(run.bench.repeat):
            for s in systems:
                if s.name in errors:
                    continue
                print(f"  {s.name} ...", file=sys.stderr, flush=True)
                await run.bench.flush()
                try:
                    runs[s.name].append(await fn(run, s, round_))
                except Exception as exc:
                    traceback.print_exc()
                    errors[s.name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    failed.append(f"{s.name}/{name}")
        figures = [
            Figure(s.name, name, 0, None, error=errors[s.name])
            if s.name in errors
            else combine(runs[s.name])
            for s in systems
        ]
        ours = next((f for f in figures if f.system == AQUEUE), None)
        for s, f in zip(systems, figures, strict=True):
            print(json.dumps(as_dict(f, metric, run.bench.scale, s.version, ours)), flush=True)
        grid[name] = figures
    return grid, failed, await server_version(run.bench)


def describe(server: str, run: Run, systems: Sequence[System]) -> str:
    """The table's header: server, machine, scale, and every system's versions."""
    b = run.bench
    runs = f"median of {b.repeat} runs" if b.repeat > 1 else "one run"
    versions = "; ".join(
        f"{s.name} {s.version} ("
        + ", ".join(f"{d} {v}" for d, v in list(s.versions.items())[1:])
        + ")"
        for s in systems
    )
    return (
        f"{server} (embedded, 127.0.0.1), Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, scale {b.scale:g}, {runs}, aqueue at {_commit()}.\n"
        f"Versions: {versions}."
    )


def _heading(s: System) -> str:
    return s.name if s.name == AQUEUE else f"{s.name} {s.version}"


def _commit() -> str:
    """The checked-out commit, marked when ``aqueue/`` has uncommitted changes."""
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        status = subprocess.run(
            [*git, "status", "--porcelain", "--", "aqueue"], capture_output=True, text=True
        )
    except OSError:  # no git here
        return "an unknown commit"
    if head.returncode != 0:
        return "an unknown commit"
    dirty = " (aqueue/ modified)" if status.stdout.strip() else ""
    return f"commit {head.stdout.strip()}{dirty}"
