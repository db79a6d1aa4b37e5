"""``python -m benchmarks [--scale 1.0] [--only NAME ...] [--repeat 3] [--json] [--list]``.

Starts one embedded Valkey server for the run, runs the chosen workloads in order on
it (each on an emptied server), prints one JSON line per workload on stdout as it
finishes and, unless ``--json``, a table at the end. Progress goes to stderr.
Exit status: 0 when every workload ran, 1 when one failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence

import anyio

from aqueue.server import EmbeddedServer

from . import curves, drain, enqueue, flow, latency, memory, recovery, scale, web, workflows
from .common import Bench, Result

Workload = Callable[[Bench], Awaitable[Result]]

# In run order. ``worker_rss`` reuses the ``drain_noop`` runs when both are chosen, and
# the ``processes_*`` rows of one handler share their runs (1, 2 and 4 processes).
WORKLOADS: dict[str, tuple[Workload, str]] = {
    "enqueue_serial": (enqueue.enqueue_serial, "enqueue, one await at a time"),
    "enqueue_gather": (enqueue.enqueue_gather, "enqueue, asyncio.gather of 1000"),
    "enqueue_gather_client": (
        enqueue.enqueue_gather_client,
        "the same on a redis.asyncio client passed in",
    ),
    "enqueue_gather_pipelined": (
        enqueue.enqueue_gather_pipelined,
        "enqueue, gather of 1000 vs pipelined LPUSH",
    ),
    "web_signup": (web.web_signup, "FastAPI POST /signup under wrk, vs no enqueue"),
    "enqueue_many": (enqueue.enqueue_many, "enqueue_many, batches of 1000"),
    "drain_noop": (drain.drain_noop, "one worker (concurrency 100) drains no-op tasks"),
    "drain_sleep": (drain.drain_sleep, "one worker (concurrency 100) drains 10 ms tasks"),
    "drain_uvloop": (drain.drain_uvloop, "the no-op drain on uvloop vs asyncio"),
    "latency_100": (latency.latency_100, "enqueue-to-start latency at 100 tasks/s"),
    "latency_500": (latency.latency_500, "enqueue-to-start latency at 500 tasks/s"),
    "worker_rss": (drain.worker_rss, "worker process peak RSS after a no-op drain"),
    "crash_recovery": (recovery.crash_recovery, "SIGKILL a busy worker: seconds until reaped"),
    "server_memory": (memory.server_memory, "server memory per pending no-op task"),
    "processes_2": (scale.processes_2, "aqueue worker --processes 2 vs 1, no-op tasks"),
    "processes_4": (scale.processes_4, "aqueue worker --processes 4 vs 1, no-op tasks"),
    "processes_cpu_2": (scale.processes_cpu_2, "--processes 2 vs 1, 1 ms CPU tasks"),
    "processes_cpu_4": (scale.processes_cpu_4, "--processes 4 vs 1, 1 ms CPU tasks"),
    "cluster": (scale.cluster_masters, "3-master vs 1-master cluster, 12 queues"),
    "scale_queues": (curves.scale_queues, "cost curve: 1 to 1,000 queues served"),
    "scale_backlog": (curves.scale_backlog, "cost curve: 50k to 1M pending tasks"),
    "scale_delayed": (curves.scale_delayed, "cost curve: 1k to 1M delayed tasks"),
    "scale_archive": (curves.scale_archive, "cost curve: 1k to 1M archived tasks"),
    "scale_keys": (curves.scale_keys, "cost curve: 1 to 10,000 limit keys"),
    "scale_workers": (curves.scale_workers, "cost curve: 1 to 200 idle workers"),
    "flow_limits_idle": (flow.flow_limits_idle, "limits never reached vs no limits, drain"),
    "flow_keys_1000": (flow.flow_keys_1000, "1,000 limit keys in turn vs one key, drain"),
    "flow_rate_200": (flow.flow_rate_200, 'rate_limit="200/s": starts per second'),
    "flow_concurrency": (flow.flow_concurrency, "concurrency_limit=20, 2 ms tasks: running"),
    "flow_latency": (flow.flow_latency, "idle latency of a limited task vs unlimited, p50"),
    "flow_enqueue": (workflows.flow_enqueue, "enqueue_flow of a 10k group + fan-in"),
    "flow_drain": (workflows.flow_drain, "a worker runs a 10k group + fan-in flow"),
    "flow_handoff": (workflows.flow_handoff, "100-step chain: step-to-step hand-off, p50"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="aqueue benchmarks on an embedded Valkey server; every figure is "
        "reported as a ratio to a baseline measured in the same run.",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every workload's size (0.01 for a smoke run; default 1)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="run only these workloads; a prefix selects several (--only enqueue latency)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each measurement, interleaved with its baseline; the median counts",
    )
    parser.add_argument("--json", action="store_true", help="JSON lines only, no table")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, (_, about) in WORKLOADS.items():
            print(f"{name:16} {about}")
        return 0
    if not args.scale > 0:
        parser.error(f"--scale must be > 0, got {args.scale}")
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    try:
        names = select(args.only)
    except ValueError as exc:
        parser.error(str(exc))
    with EmbeddedServer() as server:
        bench = Bench(server.url, scale=args.scale, repeat=args.repeat)
        results, failed, version = anyio.run(run, bench, names)
    if not args.json:
        print()
        print(table(results, header=describe(version, args.scale, args.repeat)))
    return 1 if failed else 0


def select(only: Sequence[str] | None) -> list[str]:
    """The workloads to run, in suite order: all, or those named or prefixed by ``only``."""
    if not only:
        return list(WORKLOADS)
    for name in only:
        if not any(w == name or w.startswith(name) for w in WORKLOADS):
            raise ValueError(f"no workload named {name!r}; choose from {', '.join(WORKLOADS)}")
    return [w for w in WORKLOADS if any(w == name or w.startswith(name) for name in only)]


async def run(bench: Bench, names: Sequence[str]) -> tuple[list[Result], list[str], str]:
    """Run the workloads in order; the results, the names of those that failed, and the
    server's version."""
    results: list[Result] = []
    failed: list[str] = []
    for i, name in enumerate(names, 1):
        fn, about = WORKLOADS[name]
        print(f"[{i}/{len(names)}] {name}: {about} ...", file=sys.stderr, flush=True)
        await bench.flush()
        start = time.perf_counter()
        try:
            result = await fn(bench)
        except Exception:
            traceback.print_exc()
            print(f"{name} failed", file=sys.stderr, flush=True)
            failed.append(name)
            continue
        result.seconds = time.perf_counter() - start
        results.append(result)
        print(json.dumps(result.as_dict(bench.scale)), flush=True)
    return results, failed, await server_version(bench)


async def server_version(bench: Bench) -> str:
    async with bench.redis() as r:
        info = await r.info("server")
    if "valkey_version" in info:
        return f"Valkey {info['valkey_version']}"
    return f"Redis {info.get('redis_version', '?')}"


def describe(server: str, scale: float, repeat: int) -> str:
    return (
        f"{server} (embedded, 127.0.0.1), Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, scale {scale:g}, median of {repeat} interleaved runs "
        "where repeated"
    )


def table(results: Sequence[Result], header: str = "") -> str:
    """A Markdown table of the results (readable as plain text too)."""
    rows = [("workload", "n", "aqueue", "baseline (same run)", "ratio", "notes")]
    for r in results:
        rows.append(
            (
                r.workload,
                f"{r.n:,}",
                f"{_num(r.value)} {r.unit}",
                f"{_num(r.baseline)} {r.unit}: {r.baseline_name}",
                f"{r.ratio:.2f}x ({r.better} is better)",
                _notes(r),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [header, ""] if header else []
    for j, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if j == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _notes(r: Result) -> str:
    e = r.extra
    if "ceiling_p50_ms" in e:
        return (
            f"p50/p99 {_num(e['p50_ms'])}/{_num(e['p99_ms'])} ms vs "
            f"{_num(e['ceiling_p50_ms'])}/{_num(e['ceiling_p99_ms'])} ms without"
        )
    if "p99_ms" in e:
        return f"p99 {_num(e['p99_ms'])} ms vs {_num(e['baseline_p99_ms'])} ms raw"
    if "raw_loop_peak_mb" in e:
        return f"raw loop peak {_num(e['raw_loop_peak_mb'])} MB"
    if "wall_ratio" in e:
        return f"{_load(e)}; {_num(e['wall_ratio'])}x counting start-up"
    if "plain_jobs_s" in e:
        spread = "/".join(f"{e[k]:g}" for k in sorted(e) if k.startswith("queues_on_master_"))
        return (
            f"queues per master {spread}; plain server {_num(e['plain_jobs_s'])} jobs/s; {_load(e)}"
        )
    if "total_mb" in e:
        return f"{_num(e['total_mb'])} MB for {r.n:,} tasks"
    return ""


def _load(e: dict[str, float]) -> str:
    """Cores used by the workers, the server and everything else on the machine, then
    the same for the baseline in brackets."""

    def cores(prefix: str) -> str:
        parts = [_num(e[f"{prefix}worker_cores"]), _num(e[f"{prefix}server_cores"])]
        if f"{prefix}other_cores" in e:
            parts.append(_num(e[f"{prefix}other_cores"]))
        return " + ".join(parts)

    names = "workers + server + other" if "other_cores" in e else "workers + server"
    return f"{names}: {cores('')} cores (baseline {cores('baseline_')})"


def _num(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"
