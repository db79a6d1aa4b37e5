"""Durations, times, sizes and lists as people read them: shared by the ``aqueue`` admin
commands and the web dashboard. Pure functions, no I/O.

Durations come in two renderings of the same split into units: ``duration`` for text
(``42ms``, ``3.2s``, ``5m 10s``), and ``duration_cell`` for a table column, which stays
narrow and lines up (``0.4s``, ``42s``, ``5m03s``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

# Past a minute, a duration shows its two largest units: (name, seconds, next, seconds).
_UNITS = (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1))


def _split(seconds: float) -> tuple[int, str, int, str]:
    """``seconds`` (at least 60) as its two largest whole units: ``(5, "m", 10, "s")``."""
    s = int(seconds)
    for unit, size, sub, sub_size in _UNITS:
        if s >= size:
            return s // size, unit, (s % size) // sub_size, sub
    raise ValueError(f"expected at least 60 seconds, got {seconds!r}")


def duration(seconds: float) -> str:
    """``42ms``, ``3.2s``, ``5m 10s``, ``2h 5m``, ``3d 4h``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    big, unit, small, sub = _split(seconds)
    return f"{big}{unit} {small}{sub}"


def duration_cell(seconds: float) -> str:
    """``0.4s``, ``4.2s``, ``42s``, ``5m03s``, ``2h05m``, ``3d04h``: at most six
    characters below 100 days, for a table column."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{int(seconds)}s"
    big, unit, small, sub = _split(seconds)
    return f"{big}{unit}{small:02d}{sub}"


def relative(when: datetime | None, now: datetime | None = None, *, cell: bool = False) -> str:
    """``3m 10s ago`` or ``in 5.0s`` (with ``cell``: ``3m10s ago``); ``""`` for no time."""
    if when is None:
        return ""
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    text = duration_cell if cell else duration
    return f"in {text(delta)}" if delta > 0 else f"{text(-delta)} ago"


def stamp(when: datetime | None) -> str:
    """``2026-05-01 12:00:00 UTC``; ``""`` for no time."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if when else ""


def size(n: int) -> str:
    """``512 B``, ``1.5 KiB``, ``3.0 MiB``, ``2.1 GiB`` (GiB past that)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{n} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def either(words: Sequence[str]) -> str:
    """``pending, scheduled or retry``."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
