"""What the dashboard's templates show beyond durations, times and sizes (those come
from ``aqueue._format``, shared with the CLI): values as JSON text, the bars of the
per-day chart and of the last hour's per-minute chart. Pure functions, no I/O."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from .._minutes import Minute
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


class Point(msgspec.Struct):
    x: float
    y: float
    label: str


class MinuteChart(msgspec.Struct):
    """Attempts per minute as bars (processed, failed) and pending tasks as a line, over
    the last hour; ``lines`` are SVG polyline points, one per run of known minutes."""

    width: int
    height: int
    bar: float
    bars: list[Bar]
    points: list[Point]
    lines: list[str]
    labels: list[tuple[float, str]]
    peak_rate: float
    peak_pending: int
    empty: bool


def minute_chart(minutes: list[Minute], width: int = 1200, height: int = 170) -> MinuteChart:
    """Side-by-side processed and failed bars per minute (scaled to the busiest minute),
    and the pending tasks at each minute's sample as a line (scaled to its own peak).
    A minute without a sample has neither: it is a gap, not a zero."""
    plot = height - 20  # room for the time labels below
    rates = [r for m in minutes for r in (m.processed, m.failed) if r is not None]
    depths = [m.pending for m in minutes if m.pending is not None]
    peak_rate, peak_pending = max(rates, default=0.0), max(depths, default=0)
    rate_scale, depth_scale = max(1.0, peak_rate), max(1, peak_pending)
    slot = width / max(1, len(minutes))
    bar = round(max(1.0, slot * 0.4), 1)
    bars: list[Bar] = []
    points: list[Point] = []
    lines: list[str] = []
    run: list[str] = []
    labels: list[tuple[float, str]] = []
    for i, m in enumerate(minutes):
        at = time.strftime("%H:%M", time.gmtime(m.minute * 60))
        x = i * slot + (slot - 2 * bar) / 2
        for j, (kind, rate) in enumerate((("processed", m.processed), ("failed", m.failed))):
            if rate is not None:
                h = plot * rate / rate_scale
                bars.append(Bar(x=round(x + j * bar, 1), y=round(plot - h, 1), height=round(h, 1),
                                kind=kind, label=f"{at}: {rate:.0f} {kind}/min"))  # fmt: skip
        if m.pending is None:
            if run:
                lines.append(" ".join(run))
            run = []
        else:
            cx, cy = round(i * slot + slot / 2, 1), round(plot - plot * m.pending / depth_scale, 1)
            points.append(Point(x=cx, y=cy, label=f"{at}: {m.pending} pending"))
            run.append(f"{cx},{cy}")
        if m.minute % 10 == 0:
            labels.append((round(i * slot + slot / 2, 1), at))
    if run:
        lines.append(" ".join(run))
    return MinuteChart(
        width=width, height=height, bar=bar, bars=bars, points=points, lines=lines,
        labels=labels, peak_rate=round(peak_rate, 1), peak_pending=peak_pending,
        empty=not rates and not depths,
    )  # fmt: skip
