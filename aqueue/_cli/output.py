"""How the admin commands print: aligned tables, ``key: value`` lines, or JSON with
``--json``. Durations, times and sizes come from ``aqueue._format``, as on the
dashboard; a missing value prints as ``-``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from .. import _format
from .._task import TaskInfo, WorkerInfo


def print_json(value: object) -> None:
    data = msgspec.json.encode(value, enc_hook=repr)
    sys.stdout.write(msgspec.json.format(data, indent=2).decode() + "\n")


def report(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    """What a command did: ``data`` as JSON with ``--json``, else ``text``."""
    if args.json:
        print_json(data)
    else:
        print(text)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Aligned columns; numbers right-aligned, everything else left-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[n]) for r in cells)) for n, h in enumerate(headers)]
    numeric = [
        bool(rows) and all(isinstance(row[n], int) for row in rows) for n in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in cells)])


def fields(pairs: Sequence[tuple[str, object]]) -> str:
    width = max(len(k) for k, _ in pairs) + 1
    return "\n".join(f"{(k + ':').ljust(width)}  {v}" for k, v in pairs)


def short(value: object, limit: int = 40) -> str:
    """A value on one line, cut at ``limit`` characters: a string as it is, anything
    else as compact JSON."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else msgspec.json.encode(value, enc_hook=repr).decode()
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def last_error(t: TaskInfo) -> str:
    """The last error, first line only: the table's last column, so it may run long."""
    return short((t.last_error or "").split("\n")[0] or None, 90)


def ago(when: datetime | None) -> str:
    return _format.relative(when, cell=True) or "-"


def when(at: datetime | None) -> str:
    return f"{_format.stamp(at)} ({ago(at)})" if at is not None else "-"


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def attempt(t: TaskInfo) -> str:
    return f"{t.retried + 1}/{t.max_retry + 1}"


def weights(w: WorkerInfo) -> str:
    return ",".join(f"{q}={weight:g}" for q, weight in w.queues.items())


def or_dash(value: object) -> object:
    return "-" if value is None else value


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def today() -> str:
    return datetime.now(UTC).date().isoformat()
