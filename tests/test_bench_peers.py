"""``make bench-peers`` (benchmarks/peers/) cannot rot: the adapters keep to the driver's
contract, the report formats side-by-side figures and ratios, and aqueue's side runs
end to end through the same child driver the peers use.

No peer is installed here (they live in .bench-venvs/, made by the runner): peer
adapters are checked as source. Nothing asserts a speed; real figures are in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import ast
import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import aqueue
from benchmarks.common import Bench
from benchmarks.peers import envs, kit
from benchmarks.peers.child import info, load
from benchmarks.peers.crash import Plan
from benchmarks.peers.harness import Run
from benchmarks.peers.report import Figure, Metric, as_dict, combine, ratio_cell, table
from benchmarks.peers.runner import WORKLOADS, select, select_peers

ROOT = Path(__file__).resolve().parent.parent
PEERS_DIR = ROOT / "benchmarks" / "peers"
ADAPTERS = sorted(PEERS_DIR.glob("adapter_*.py"))
# Modules that run inside a peer's environment: standard library and the peer only.
PEER_SIDE = [PEERS_DIR / "__init__.py", PEERS_DIR / "kit.py", PEERS_DIR / "child.py"]
RATE = Metric("jobs/s", "higher")
MS = Metric("ms", "lower")
CRASH = Metric("s", "lower", (("lost", "lost {}"), ("twice", "twice {}")))
WEB = Metric("req/s", "higher", (("req_p50_ms", "p50 {}"), ("req_p99_ms", "p99 {} ms")))


def imported_roots(path: Path) -> set[str]:
    """Top-level names of the absolute imports in a module ('.' for relative ones)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add("." if node.level else (node.module or "").split(".")[0])
    return roots


def test_there_is_one_adapter_per_peer_plus_aqueue() -> None:
    names = {p.stem.removeprefix("adapter_") for p in ADAPTERS}
    assert names == {"aqueue", *envs.PEERS}
    assert envs.PEERS == ("arq", "saq", "streaq", "taskiq")


@pytest.mark.parametrize("path", ADAPTERS, ids=lambda p: p.stem)
def test_each_adapter_compiles_and_defines_the_driver_contract(path: Path) -> None:
    source = path.read_text()
    compile(source, str(path), "exec")
    tree = ast.parse(source)
    assigned = {
        t.id
        for n in tree.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    assert {"DISTRIBUTIONS", "BATCH_API"} <= assigned
    contexts = {
        n.name
        for n in tree.body
        if isinstance(n, ast.AsyncFunctionDef)
        and any(isinstance(d, ast.Name) and d.id == "asynccontextmanager" for d in n.decorator_list)
    }
    assert contexts == {"producer", "worker"}
    jobs = {n.name for n in tree.body if isinstance(n, ast.AsyncFunctionDef)}
    assert {"item", "noop", "stamp", "crash", "welcome"} <= jobs
    producer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "_Producer")
    methods = {n.name for n in producer.body if isinstance(n, ast.AsyncFunctionDef)}
    assert {"item", "noop", "stamp", "crash", "signup"} <= methods


@pytest.mark.parametrize("path", [p for p in ADAPTERS if p.stem != "adapter_aqueue"])
def test_peer_adapters_import_only_their_peer_the_stdlib_and_the_kit(path: Path) -> None:
    peer = path.stem.removeprefix("adapter_")
    allowed = {peer, ".", "redis", "taskiq_redis", "__future__", *sys.stdlib_module_names}
    assert imported_roots(path) <= allowed


@pytest.mark.parametrize("path", PEER_SIDE, ids=lambda p: p.name)
def test_the_driver_side_imports_only_the_standard_library(path: Path) -> None:
    assert imported_roots(path) <= {".", "__future__", *sys.stdlib_module_names}


def test_the_web_app_imports_its_web_stack_and_no_system() -> None:
    # It runs in every system's web environment: aqueue is not installed in a peer's.
    stack = {"fastapi", "uvicorn", "msgspec", "__future__", *sys.stdlib_module_names}
    assert imported_roots(ROOT / "benchmarks" / "signup_app.py") <= stack
    assert imported_roots(PEERS_DIR / "webapp.py") <= {".", *stack}


def test_the_aqueue_adapter_loads_and_reports_its_versions() -> None:
    out = info(load("aqueue"))
    assert out["batch_api"] == "Client.enqueue_many"
    assert list(out["versions"]) == ["aqueue-redis", "redis", "hiredis", "msgspec"]
    assert all(out["versions"].values())


def test_peers_install_into_their_own_environment_never_dot_venv() -> None:
    for peer in envs.PEERS:
        py = envs.python(peer)
        assert py.is_relative_to(ROOT / ".bench-venvs" / peer)
        command = envs.pip_command(peer, py)
        assert command[:4] == [str(py), "-m", "pip", "install"]
        assert command[-len(envs.REQUIREMENTS[peer]) :] == list(envs.REQUIREMENTS[peer])
        assert "--upgrade" in envs.pip_command(peer, py, upgrade=True)
        assert envs.python(peer, web=True).is_relative_to(ROOT / ".bench-venvs" / "web" / peer)
    assert ".bench-venvs/" in (ROOT / ".gitignore").read_text().splitlines()


def test_a_web_environment_is_the_systems_freeze_with_the_locked_web_stack(
    tmp_path: Path,
) -> None:
    lock = tmp_path / "dev.txt"
    lock.write_text("# pinned\nfastapi==0.100.0\nmsgspec==0.18.0\nuvicorn==0.30.0\n")
    pins = envs.web_pins(lock)
    assert pins == ("fastapi==0.100.0", "starlette", "pydantic", "uvicorn==0.30.0", "h11",
                    "msgspec==0.18.0")  # fmt: skip
    freeze = ["arq==0.28.0", "redis==5.3.1", "msgspec==0.22.0", "pydantic_core==2.50.5"]
    wanted = envs.web_requirements("arq", freeze)
    # The system's own versions stay; the web stack's come from the lock, for all alike.
    assert wanted[:3] == ("arq==0.28.0", "redis==5.3.1", "pydantic_core==2.50.5")
    assert wanted[3:] == envs.web_pins()
    assert envs.web_requirements("aqueue", [])[:2] == ("--editable", str(ROOT))


def test_workloads_and_peers_are_chosen_by_name_or_prefix_in_report_order() -> None:
    assert select(None) == list(WORKLOADS)
    assert select(["latency", "enqueue_batch"]) == ["enqueue_batch", "latency_100", "latency_500"]
    with pytest.raises(ValueError, match="'nope'"):
        select(["nope"])
    assert select_peers(None) == list(envs.PEERS)
    assert select_peers(["taskiq", "arq"]) == ["arq", "taskiq"]
    with pytest.raises(ValueError, match="'celery'"):
        select_peers(["celery"])


def fake_grid() -> dict[str, list[Figure]]:
    return {
        "enqueue_batch": [
            Figure("aqueue", "enqueue_batch", 50_000, 20_000.0),
            Figure("arq", "enqueue_batch", 50_000, None, note="no batch enqueue API"),
            Figure("streaq", "enqueue_batch", 50_000, 5_000.0),
            Figure("taskiq", "enqueue_batch", 0, None, error="ChildFailed: boom"),
        ],
        "latency_500": [
            Figure("aqueue", "latency_500", 1500, 1.5, {"p99_ms": 4.0}),
            Figure("arq", "latency_500", 1500, 450.0, {"p99_ms": 500.0}),
            Figure("streaq", "latency_500", 1500, 3.0, {"p99_ms": 20.0}),
            Figure("taskiq", "latency_500", 1500, 10.0, {"p99_ms": 8.0}),
        ],
    }


def test_the_table_sets_systems_side_by_side_with_the_ratio_to_the_best_peer() -> None:
    columns = {"aqueue": "aqueue", "arq": "arq 0.28", "streaq": "streaq 7.2", "taskiq": "taskiq"}
    text = table(fake_grid(), {"enqueue_batch": RATE, "latency_500": MS}, columns, "HEADER")
    lines = text.splitlines()
    assert lines[0] == "HEADER"
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines if line.startswith("|")]
    assert rows[0] == [
        "workload",
        "n",
        "aqueue",
        "arq 0.28",
        "streaq 7.2",
        "taskiq",
        "aqueue / best peer",
    ]
    assert rows[2] == [
        "enqueue_batch (jobs/s)",
        "50,000",
        "20,000",
        "-",
        "5,000",
        "failed",
        "4.00x vs streaq (higher is better)",
    ]
    # Latency: p50 / p99 per system; each ratio against the peer best at that figure.
    assert rows[3] == [
        "latency_500 (p50 / p99 ms)",
        "1,500",
        "1.50 / 4.00",
        "450 / 500",
        "3.00 / 20.0",
        "10.0 / 8.00",
        "0.50x vs streaq, p99 0.50x vs taskiq (lower is better)",
    ]


def test_cells_show_a_workloads_details_and_what_gave_up_at_its_cap() -> None:
    grid = {
        "crash_defaults": [
            Figure("aqueue", "crash_defaults", 500, 16.5, {"lost": 0.0, "twice": 0.0}),
            Figure("arq", "crash_defaults", 500, None, {"lost": 50.0, "twice": 0.0, "cap": 120}),
            Figure("saq", "crash_defaults", 500, 62.0, {"lost": 0.0, "twice": 3.0}),
        ],
        "web_signup": [
            Figure("aqueue", "web_signup", 50, 4740.0, {"req_p50_ms": 9.7, "req_p99_ms": 39.2}),
            Figure("arq", "web_signup", 50, 1580.0, {"req_p50_ms": 30.4, "req_p99_ms": 55.5}),
            Figure("saq", "web_signup", 50, 2370.0, {"req_p50_ms": 20.6, "req_p99_ms": 41.3}),
        ],
    }
    columns = {"aqueue": "aqueue", "arq": "arq", "saq": "saq"}
    text = table(grid, {"crash_defaults": CRASH, "web_signup": WEB}, columns)
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()]
    assert rows[2] == [
        "crash_defaults (s)",
        "500",
        "16.5 (lost 0, twice 0)",
        "> 120 (lost 50, twice 0)",
        "62.0 (lost 0, twice 3)",
        "0.27x vs saq (lower is better)",
    ]
    assert rows[3] == [
        "web_signup (req/s)",
        "50",
        "4,740 (p50 9.70, p99 39.2 ms)",
        "1,580 (p50 30.4, p99 55.5 ms)",
        "2,370 (p50 20.6, p99 41.3 ms)",
        "2.00x vs saq (higher is better)",
    ]


def test_a_ratio_needs_both_aqueue_and_a_peer() -> None:
    alone = [Figure("aqueue", "drain_noop", 10, 5.0)]
    assert ratio_cell(alone, RATE) == "- (higher is better)"
    failed = [
        Figure("aqueue", "drain_noop", 0, None, error="x"),
        Figure("arq", "drain_noop", 10, 1),
    ]
    assert ratio_cell(failed, RATE) == "- (higher is better)"


def test_json_lines_carry_the_version_and_aqueues_ratio_to_that_peer() -> None:
    ours, arq = fake_grid()["latency_500"][:2]
    line: dict[str, Any] = json.loads(json.dumps(as_dict(arq, MS, 0.5, "0.28.0", ours)))
    assert line == {
        "system": "arq",
        "version": "0.28.0",
        "workload": "latency_500",
        "scale": 0.5,
        "n": 1500,
        "unit": "ms",
        "better": "lower",
        "value": 450.0,
        "extra": {"p99_ms": 500.0},
        "aqueue_ratio": 0.003333,
    }
    assert "aqueue_ratio" not in as_dict(ours, MS, 0.5, "0.1.0", ours)
    missing = fake_grid()["enqueue_batch"][1]
    assert as_dict(missing, RATE, 1, "0.28.0", ours)["note"] == "no batch enqueue API"


def test_repeats_combine_into_medians_figure_by_figure() -> None:
    runs = [
        Figure("saq", "latency_100", 300, v, {"p99_ms": p99})
        for v, p99 in ((3.0, 9.0), (1.0, 30.0), (2.0, 10.0))
    ]
    f = combine(runs)
    assert (f.value, f.extra, f.n) == (2.0, {"p99_ms": 10.0, "min": 1.0, "max": 3.0}, 300)
    assert combine(runs[:1]).extra == {"p99_ms": 9.0}  # one run: no range


@pytest.mark.anyio
async def test_waiting_on_jobs_fails_at_once_when_the_worker_task_dies() -> None:
    async def broken() -> None:
        raise ConnectionError("no server")

    never = asyncio.Event()
    async with kit.background(broken()):
        with pytest.raises(RuntimeError, match="no server"):
            await kit.wait(never, timeout=30)


@pytest.mark.anyio
async def test_a_worker_that_ignores_cancellation_is_left_behind_not_awaited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # swallows the cancellation, as taskiq's receiver can

    monkeypatch.setattr(kit, "STOP_SECONDS", 0.05)
    monkeypatch.setattr(kit, "ABANDONED", [])
    async with kit.background(stubborn()):
        await asyncio.sleep(0)
    (task,) = kit.ABANDONED
    assert not task.done()
    release.set()
    await task


def test_the_crash_workload_kills_a_full_worker_after_two_rounds_of_its_slots() -> None:
    full = Plan.at(Run(Bench("redis://unused", scale=1)))
    assert (full.jobs, full.concurrency, full.job_seconds, full.cap) == (500, 50, 2.0, 120.0)
    assert full.kill_after == 100
    tiny = Plan.at(Run(Bench("redis://unused", scale=0.005)))
    assert (tiny.jobs, tiny.concurrency, tiny.kill_after) == (20, 2, 4)
    assert tiny.job_seconds == pytest.approx(0.2)


def test_aqueue_loses_nothing_and_waits_out_no_lease_when_its_worker_is_killed() -> None:
    # `aqueue worker` at the defaults (lease_ttl 30 s), SIGKILLed holding every slot's
    # task; a new one starts at once on this host and takes the dead one's tasks back.
    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.peers", "--no-peers", "--here", "--scale", "0.005"),
            *("--json", "--only", "crash_defaults"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (r,) = [json.loads(line) for line in done.stdout.splitlines()]
    extra = r["extra"]
    assert (extra["lost"], extra["twice"]) == (0, 0), r
    assert extra["running_at_kill"] == extra["concurrency"] == 2, r
    assert extra["done_at_kill"] >= 4, r
    # 16 jobs of 0.2 s left on 2 slots take 1.6 s; a lease waited out would take 30 s.
    assert r["value"] < aqueue.Worker(aqueue.Mux()).options["lease_ttl"] / 2, r


def test_aqueue_alone_runs_end_to_end_through_the_child_driver() -> None:
    workloads = [
        "enqueue_batch", "drain_noop", "latency_500", "worker_rss", "server_memory", "web_signup"
    ]  # fmt: skip
    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.peers", "--no-peers", "--here", "--scale", "0.005"),
            *("--json", "--only", *workloads),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["system"], r["workload"]) for r in lines] == [("aqueue", w) for w in workloads]
    for r in lines:
        assert r["value"] > 0, r
        assert r["version"] == aqueue.__version__
    by_name = {r["workload"]: r for r in lines}
    assert by_name["latency_500"]["extra"]["p99_ms"] >= by_name["latency_500"]["value"]
    assert by_name["worker_rss"]["value"] >= by_name["worker_rss"]["extra"]["idle_mb"]


def test_an_unknown_peer_is_a_usage_error_before_any_environment_is_made() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.peers", "--peers", "celery"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "'celery'" in done.stderr
    assert done.stdout == ""
