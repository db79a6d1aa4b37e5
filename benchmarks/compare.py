"""``python -m benchmarks.compare REV [--rounds 3] [--only NAME ...] [--scale 1.0]``:
the hot-path workloads of ``make bench`` for the code at git revision REV ("before")
and for the working tree ("after"), in one run.

The two take turns (before, after, before, after, ...), each round a fresh
``python -m benchmarks --json`` process on its own server, so that the machine's
drift hits both alike. Per workload it prints the medians and two comparisons:
``after/before`` of the raw figure, and of the figure's ratio to its own same-process
baseline (a raw redis-py loop that does not depend on aqueue's code), which cancels
most of the noise between processes. Exit status 0, or 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HOT_PATH = ["enqueue", "drain_noop", "drain_uvloop", "latency"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare")
    parser.add_argument("rev", help="the git revision to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--only", nargs="+", default=HOT_PATH)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    with tempfile.TemporaryDirectory(prefix="aqueue-before-") as tmp:
        before = Path(tmp)
        try:
            export(args.rev, before)
        except subprocess.CalledProcessError as exc:
            parser.error(f"cannot export revision {args.rev!r}: {exc.stderr.decode().strip()}")
        runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
        for i in range(args.rounds):
            for side, tree in (("before", before), ("after", ROOT)):
                print(f"round {i + 1}/{args.rounds}: {side}", file=sys.stderr, flush=True)
                runs[side] += bench(tree, args.only, args.scale)
    print(report(runs, args.rev, args.rounds))
    return 0


def export(rev: str, into: Path) -> None:
    """The tree of ``rev`` (its aqueue and benchmarks packages) into ``into``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "aqueue", "benchmarks"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    with tempfile.TemporaryFile() as f:
        f.write(archive)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(into, filter="data")


def bench(tree: Path, only: Sequence[str], scale: float) -> list[dict[str, Any]]:
    """One ``python -m benchmarks --json`` run with ``tree`` first on the path, so that
    it (and every worker process it starts) imports that tree's aqueue."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--json", "--repeat", "1", "--scale", str(scale),
         "--only", *only],
        cwd=tree,
        env=env,
        check=False,
        capture_output=True,
        text=True,
    )  # fmt: skip
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def report(runs: dict[str, list[dict[str, Any]]], rev: str, rounds: int) -> str:
    names = list(dict.fromkeys(r["workload"] for r in runs["after"] + runs["before"]))
    rows = [
        f"before = {rev}, after = working tree; median of {rounds} alternating rounds",
        "",
        "| workload | unit | before | after | after/before | vs baseline before | "
        "vs baseline after | change vs baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        b = [r for r in runs["before"] if r["workload"] == name]
        a = [r for r in runs["after"] if r["workload"] == name]
        if not a or not b:
            rows.append(f"| {name} | | {len(b)} runs | {len(a)} runs | | | | |")
            continue
        bv, av = _median(b, "value"), _median(a, "value")
        br, ar = _median(b, "ratio"), _median(a, "ratio")
        rows.append(
            f"| {name} | {a[0]['unit']} | {bv:,.2f} | {av:,.2f} | {av / bv:.2f}x | "
            f"{br:.2f}x | {ar:.2f}x | {ar / br:.2f}x ({a[0]['better']} is better) |"
        )
    return "\n".join(rows)


def _median(results: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in results))


if __name__ == "__main__":
    raise SystemExit(main())
