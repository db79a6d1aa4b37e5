"""Turning Inspector results into what the templates show: durations, ages, JSON text and
the bars of the per-day chart. Pure functions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from .._task import DailyStats


def duration(seconds: float) -> str:
    """``42ms``, ``3.2s``, ``5m 10s``, ``2h 5m``, ``3d 4h``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if s >= size:
            return f"{s // size}{unit} {(s % size) // sub_size}{sub}"
    return f"{s // 60}m {s % 60}s"


def relative(when: datetime | None, now: datetime | None = None) -> str:
    """``3m 10s ago`` or ``in 5.0s``; an empty string for no time."""
    if when is None:
        return ""
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return f"in {duration(delta)}" if delta > 0 else f"{duration(-delta)} ago"


def stamp(when: datetime | None) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if when else ""


def pretty(value: Any) -> str:
    """A payload, result or progress as indented JSON (bytes as base64), else its repr.
    The template escapes it: this returns plain text."""
    try:
        return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()
    except (TypeError, ValueError):
        return repr(value)


def short(value: Any, limit: int = 80) -> str:
    """One line of compact JSON, cut at ``limit`` characters."""
    try:
        text = msgspec.json.encode(value).decode()
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def merge(histories: list[list[DailyStats]]) -> list[DailyStats]:
    """Sum per-queue histories (each today first, same days) into one, oldest first."""
    days: dict[str, list[int]] = {}
    for history in histories:
        for day in history:
            counts = days.setdefault(day.date, [0, 0])
            counts[0] += day.processed
            counts[1] += day.failed
    return [DailyStats(date=d, processed=p, failed=f) for d, (p, f) in sorted(days.items())]


class Bar(msgspec.Struct):
    x: float
    y: float
    height: float
    kind: str
    label: str


class Chart(msgspec.Struct):
    width: int
    height: int
    bars: list[Bar]
    labels: list[tuple[float, str]]
    peak: int
    empty: bool


def chart(days: list[DailyStats], width: int = 1200, height: int = 170) -> Chart:
    """Side-by-side processed and failed bars per day, oldest on the left, scaled to the
    busiest day; the caller draws them as SVG rectangles."""
    plot = height - 20  # room for the date labels below the bars
    peak = max([1, *(max(d.processed, d.failed) for d in days)])
    slot = width / max(1, len(days))
    bar = max(2.0, slot * 0.35)
    bars: list[Bar] = []
    labels: list[tuple[float, str]] = []
    for i, d in enumerate(days):
        x = i * slot + (slot - 2 * bar) / 2
        for j, (kind, n) in enumerate((("processed", d.processed), ("failed", d.failed))):
            h = plot * n / peak
            label = f"{d.date}: {n} {kind}"
            bars.append(Bar(x=round(x + j * bar, 1), y=round(plot - h, 1), height=round(h, 1),
                            kind=kind, label=label))  # fmt: skip
        labels.append((round(i * slot + slot / 2, 1), d.date[5:]))
    empty = all(d.processed == 0 and d.failed == 0 for d in days)
    return Chart(width=width, height=height, bars=bars, labels=labels, peak=peak, empty=empty)
