"""``python -m benchmarks.compare REV [REV ...] [--rounds 3] [--only NAME ...]
[--scale 1.0]``: the hot-path workloads of ``make bench`` for the code at each git
revision REV and for the working tree, in one run.

The sides take turns (REV1, REV2, ..., tree, REV1, ...), each round a fresh
``python -m benchmarks --json`` process on its own server, so that the machine's
drift hits all alike. Per workload it prints each side's median figure and its median
ratio to its own same-process baseline (a raw redis-py loop that does not depend on
aqueue's code, which cancels most of the noise between processes), and the change of
that ratio against the first side. Exit status 0, or 2 for bad arguments.
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
    parser.add_argument("revs", nargs="+", help="git revisions to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--only", nargs="+", default=HOT_PATH)
    parser.add_argument(
        "--probe",
        action="store_true",
        help="run the working tree's benchmarks/probe.py (public API only) for every side",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    with tempfile.TemporaryDirectory(prefix="aqueue-before-") as tmp:
        sides: dict[str, Path] = {}
        for rev in args.revs:
            tree = Path(tmp) / rev.replace("/", "_")
            try:
                export(rev, tree)
            except subprocess.CalledProcessError as exc:
                parser.error(f"cannot export revision {rev!r}: {exc.stderr.decode().strip()}")
            sides[rev] = tree
        sides["tree"] = ROOT
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        for i in range(args.rounds):
            for side, tree in sides.items():
                print(f"round {i + 1}/{args.rounds}: {side}", file=sys.stderr, flush=True)
                if args.probe:
                    runs[side] += probe(tree, args.scale)
                else:
                    runs[side] += bench(tree, args.only, args.scale)
    print(report(runs, args.rounds))
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


def probe(tree: Path, scale: float) -> list[dict[str, Any]]:
    """The working tree's ``probe.py`` with ``tree``'s aqueue first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    script = ROOT / "benchmarks" / "probe.py"
    out = subprocess.run(
        [sys.executable, str(script), "--scale", str(scale)],
        env=env, check=False, capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def report(runs: dict[str, list[dict[str, Any]]], rounds: int) -> str:
    sides = list(runs)
    first = sides[0]
    names = list(dict.fromkeys(r["workload"] for side in sides for r in runs[side]))
    head = " | ".join(f"{side}: figure (vs baseline)" for side in sides)
    changes = " | ".join(f"{side} vs {first}" for side in sides[1:])
    rows = [
        f"median of {rounds} alternating rounds; 'tree' is the working tree",
        "",
        f"| workload | unit | {head} | {changes} |",
        "|---|---|" + "---|" * (len(sides) * 2 - 1),
    ]
    for name in names:
        per = {side: [r for r in runs[side] if r["workload"] == name] for side in sides}
        if not all(per.values()):
            rows.append(f"| {name} | | missing runs |")
            continue
        unit, better = per[first][0]["unit"], per[first][0]["better"]
        cells = [
            f"{_median(per[s], 'value'):,.2f} ({_median(per[s], 'ratio'):.2f}x)" for s in sides
        ]
        base = _median(per[first], "ratio")
        moved = [f"{_median(per[s], 'ratio') / base:.2f}x" for s in sides[1:]]
        rows.append(f"| {name} | {unit} ({better} is better) | {' | '.join(cells + moved)} |")
    return "\n".join(rows)


def _cell(results: list[dict[str, Any]]) -> str:
    return f"{_median(results, 'value'):,.2f} ({_median(results, 'ratio'):.2f}x)"


def _median(results: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in results))


if __name__ == "__main__":
    raise SystemExit(main())
