"""What the dashboard's templates show beyond durations, times and sizes (those come
from ``aqueue._format``, shared with the CLI): values as JSON text, the bars of the
per-day chart. Pure functions, no I/O."""

from __future__ import annotations

from typing import Any

import msgspec

from .._task import DailyStats


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
