"""Results of the side-by-side run: one ``Figure`` per (system, workload), its JSON
line, and the Markdown table with aqueue, each peer and aqueue / best peer."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

AQUEUE = "aqueue"


@dataclass(frozen=True)
class Metric:
    """What a workload measures: its unit, which way is good, and the extras its table
    cells show after the value, as (key, template) pairs: with ``("req_p99_ms", "p99 {}
    ms")`` a cell reads ``4,740 (p99 39.2 ms)``."""

    unit: str
    better: Literal["higher", "lower"]
    details: tuple[tuple[str, str], ...] = ()


@dataclass
class Figure:
    """One system's result on one workload (the median over the run's repeats).

    ``value`` is None when the system has no API for the workload (``note`` says so)
    or when it failed (``error``). ``extra`` holds secondary figures, e.g. ``p99_ms``.
    """

    system: str
    workload: str
    n: int
    value: float | None
    extra: dict[str, float] = field(default_factory=dict)
    note: str = ""
    error: str = ""


def combine(runs: Sequence[Figure]) -> Figure:
    """The median of repeated runs of one system on one workload, key by key; with more
    than one run, the range of the main value too (``extra`` ``min`` and ``max``)."""
    first = runs[0]
    values = [r.value for r in runs if r.value is not None]
    keys = {k for r in runs for k in r.extra}
    extra = {k: statistics.median(r.extra[k] for r in runs if k in r.extra) for k in sorted(keys)}
    if len(values) > 1:
        extra |= {"min": min(values), "max": max(values)}
    return Figure(
        first.system,
        first.workload,
        first.n,
        statistics.median(values) if values else None,
        extra,
        first.note,
        first.error,
    )


def as_dict(
    f: Figure, metric: Metric, scale: float, version: str, aqueue: Figure | None
) -> dict[str, Any]:
    """The JSON line of a figure. ``aqueue_ratio`` is aqueue's value over this
    system's, measured in the same run (absent for aqueue itself)."""
    out: dict[str, Any] = {
        "system": f.system,
        "version": version,
        "workload": f.workload,
        "scale": scale,
        "n": f.n,
        "unit": metric.unit,
        "better": metric.better,
        "value": _round(f.value),
        "extra": {k: _round(v) for k, v in f.extra.items()},
    }
    if f.system != AQUEUE and aqueue is not None and aqueue.value and f.value:
        out["aqueue_ratio"] = _round(aqueue.value / f.value)
    if f.note:
        out["note"] = f.note
    if f.error:
        out["error"] = f.error
    return out


def best_peer(figures: Sequence[Figure], metric: Metric, key: str = "") -> Figure | None:
    """The peer with the best ``value`` (or ``extra[key]``), None if none has one."""
    scored = [(f, _get(f, key)) for f in figures if f.system != AQUEUE]
    present = [(f, v) for f, v in scored if v is not None]
    if not present:
        return None
    pick = max if metric.better == "higher" else min
    return pick(present, key=lambda fv: fv[1])[0]


def ratio_cell(figures: Sequence[Figure], metric: Metric, keys: Sequence[str] = ("",)) -> str:
    """``aqueue / best peer`` for each key (the value, or an extra such as p99)."""
    ours = next((f for f in figures if f.system == AQUEUE), None)
    parts: list[str] = []
    for key in keys:
        best = best_peer(figures, metric, key)
        mine = _get(ours, key) if ours is not None else None
        theirs = _get(best, key) if best is not None else None
        if best is None or not mine or not theirs:
            parts.append("-")
            continue
        label = f"{key.removesuffix('_ms')} " if key else ""
        parts.append(f"{label}{mine / theirs:.2f}x vs {best.system}")
    return ", ".join(parts) + f" ({metric.better} is better)"


def table(
    grid: Mapping[str, Sequence[Figure]],
    metrics: Mapping[str, Metric],
    columns: Mapping[str, str],
    header: str = "",
) -> str:
    """A Markdown table: one row per workload (``grid`` maps it to its figures), one
    column per system (``columns`` maps system to heading, e.g. with its version)."""
    rows = [("workload", "n", *columns.values(), "aqueue / best peer")]
    for workload, figures in grid.items():
        metric = metrics[workload]
        by_system = {f.system: f for f in figures}
        latency = any("p99_ms" in f.extra for f in figures)
        unit = f"p50 / p99 {metric.unit}" if latency else metric.unit
        n = max((f.n for f in figures), default=0)
        cells = [_cell(by_system.get(s), latency, metric.details) for s in columns]
        keys = ("", "p99_ms") if latency else ("",)
        rows.append((f"{workload} ({unit})", f"{n:,}", *cells, ratio_cell(figures, metric, keys)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [header, ""] if header else []
    for j, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if j == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(f: Figure | None, latency: bool, details: Sequence[tuple[str, str]] = ()) -> str:
    if f is None:
        return ""
    if f.error:
        return "failed"
    shown = [form.format(_count(f.extra[key])) for key, form in details if key in f.extra]
    after = f" ({', '.join(shown)})" if shown else ""
    if f.value is None:
        # A workload that gave up at a deadline (``cap``) says so: ``> 120 (lost 50, ...)``.
        return f"> {num(f.extra['cap'])}{after}" if "cap" in f.extra else "-"
    if latency:
        return f"{num(f.value)} / {num(f.extra.get('p99_ms', float('nan')))}"
    return num(f.value) + after


def _count(x: float) -> str:
    """A detail: whole numbers (counts) as such, other figures as ``num`` has them."""
    return f"{x:,.0f}" if float(x).is_integer() else num(x)


def _get(f: Figure, key: str) -> float | None:
    return f.value if not key else f.extra.get(key)


def num(x: float) -> str:
    """Readable figures: no more digits than the noise allows."""
    if x != x:  # NaN
        return "?"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _round(x: float | None) -> float | None:
    """Four significant digits: more would be noise."""
    return None if x is None else float(f"{x:.4g}")
