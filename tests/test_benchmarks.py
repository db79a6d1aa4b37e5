"""The benchmark suite (``make bench``) runs end to end and reports well-formed figures.

Nothing here asserts a speed: the machine is shared and noisy, and the suite reports
ratios to same-run baselines for that reason. Real figures live in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from aqueue._redis.broker import DEFAULT_PREFIX
from aqueue._redis.keys import queue_keys
from benchmarks.cli import WORKLOADS, select
from benchmarks.common import percentile
from benchmarks.scale import Target, spread

ROOT = Path(__file__).resolve().parent.parent
KEYS = {
    "workload",
    "scale",
    "n",
    "unit",
    "value",
    "baseline",
    "baseline_name",
    "ratio",
    "better",
    "seconds",
    "extra",
}


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,  # every workload once, tiny: about a minute here
        check=False,
    )


def test_tiny_run_prints_one_json_line_per_workload_with_positive_figures() -> None:
    done = bench("--scale", "0.01", "--repeat", "1", "--json")
    assert done.returncode == 0, done.stderr
    results: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["workload"] for r in results] == list(WORKLOADS)
    for r in results:
        assert r.keys() == KEYS, r
        assert r["scale"] == 0.01
        assert isinstance(r["n"], int)
        assert r["n"] > 0, r
        for key in ("value", "baseline", "ratio"):
            assert r[key] > 0, (key, r)
        assert r["ratio"] == pytest.approx(r["value"] / r["baseline"], rel=0.01)
        assert r["better"] in ("higher", "lower")
        # CPU shares may round to 0 in a short window; every other extra is a positive figure.
        assert all(v > 0 or (k.endswith("_cores") and v == 0) for k, v in r["extra"].items()), r
    by_name = {r["workload"]: r for r in results}
    for name in ("latency_100", "latency_500"):
        assert by_name[name]["extra"]["p99_ms"] >= by_name[name]["value"]
    # A peak is never below the same process's earlier peak.
    assert by_name["worker_rss"]["value"] >= by_name["worker_rss"]["baseline"]
    # The rows of one handler share their runs, so their baseline (1 process) is one figure.
    assert by_name["processes_2"]["baseline"] == by_name["processes_4"]["baseline"]
    assert by_name["processes_cpu_2"]["baseline"] == by_name["processes_cpu_4"]["baseline"]
    cluster = by_name["cluster"]["extra"]
    assert cluster["queues"] == 12
    assert [cluster[f"queues_on_master_{m}"] for m in (1, 2, 3)] == [4, 4, 4]


def test_a_readable_table_follows_the_json_lines_without_json_flag() -> None:
    done = bench("--scale", "0.01", "--only", "server_memory")
    assert done.returncode == 0, done.stderr
    first, *rest = done.stdout.splitlines()
    assert json.loads(first)["workload"] == "server_memory"
    table = [line for line in rest if line.startswith("|")]
    assert table[0].split("|")[1].strip() == "workload"
    assert [line.split("|")[1].strip() for line in table[2:]] == ["server_memory"]


def test_an_unknown_workload_is_a_usage_error_naming_it() -> None:
    done = bench("--only", "enqueue_fast")
    assert done.returncode == 2
    assert "'enqueue_fast'" in done.stderr
    assert done.stdout == ""


def test_only_takes_workload_names_and_prefixes_in_suite_order() -> None:
    assert select(None) == list(WORKLOADS)
    assert select(["latency", "enqueue_many"]) == ["enqueue_many", "latency_100", "latency_500"]
    assert select(["processes"]) == [
        "processes_2",
        "processes_4",
        "processes_cpu_2",
        "processes_cpu_4",
    ]
    assert select(["cluster"]) == ["cluster"]
    with pytest.raises(ValueError, match="'nope'"):
        select(["nope"])


def test_cluster_queues_are_chosen_to_put_as_many_on_each_master() -> None:
    # Three masters of a third of the slots each: "{q0}" hashes to slot 3387 (the first),
    # "{q2}" to 11641 (the third).
    target = Target("redis+cluster://unused", [aioredis.Redis() for _ in range(3)])
    assert target.node_of("aq:{q0}:stats") == 0
    assert target.node_of("aq:{q2}:pending") == 2
    queues = spread(target, 12)
    on = [target.node_of(queue_keys(DEFAULT_PREFIX, q).stats) for q in queues]
    assert sorted(on) == [0] * 4 + [1] * 4 + [2] * 4
    assert len(set(queues)) == 12


def test_percentile_interpolates_between_ranks() -> None:
    data = [float(x) for x in range(1, 101)]
    assert percentile(data, 50) == pytest.approx(50.5)
    assert percentile(data, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError, match="no data"):
        percentile([], 50)
