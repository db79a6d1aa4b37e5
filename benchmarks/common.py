"""What every workload shares: the run's server, results, statistics, child processes."""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import redis.asyncio as aioredis

# The repository root: the worker child runs ``python -m benchmarks.child`` from here.
ROOT = Path(__file__).resolve().parent.parent

# The key the raw redis-py baselines push to (same hash-tag style as aqueue's keys).
RAW_PENDING = "raw:{default}:pending"
RAW_PROCESSING = "raw:{default}:processing"
RAW_DONE = "raw:{default}:done"


@dataclass
class Result:
    """One workload's figure, its same-run baseline and their ratio (``value / baseline``).

    ``better`` says which way is good for ``value``: with ``"higher"`` a ratio below 1
    means aqueue is slower than the baseline, with ``"lower"`` a ratio above 1 does.
    """

    workload: str
    n: int
    unit: str
    value: float
    baseline: float
    baseline_name: str
    better: Literal["higher", "lower"]
    extra: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the whole workload, baseline included

    @property
    def ratio(self) -> float:
        return self.value / self.baseline

    def as_dict(self, scale: float) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "scale": scale,
            "n": self.n,
            "unit": self.unit,
            "value": _round(self.value),
            "baseline": _round(self.baseline),
            "baseline_name": self.baseline_name,
            "ratio": _round(self.ratio),
            "better": self.better,
            "seconds": round(self.seconds, 3),
            "extra": {k: _round(v) for k, v in self.extra.items()},
        }


class Bench:
    """The context a workload runs in: the server's URL, the scale, a run-wide memo."""

    def __init__(self, url: str, *, scale: float = 1.0, repeat: int = 3) -> None:
        self.url = url
        self.scale = scale
        self.repeat = repeat
        # Results a later workload may reuse (the worker RSS comes from the drain run).
        self.memo: dict[str, Any] = {}

    def n(self, full: int, minimum: int = 10) -> int:
        """``full`` tasks at scale 1, scaled, never fewer than ``minimum``."""
        return max(minimum, round(full * self.scale))

    def redis(self) -> aioredis.Redis:
        """A plain redis-py client for baselines and bookkeeping (close it after use)."""
        return aioredis.Redis.from_url(self.url)

    async def flush(self) -> None:
        """Empty the server, synchronously so that its memory is really freed."""
        async with self.redis() as r:
            await r.execute_command("FLUSHALL", "SYNC")  # type: ignore[no-untyped-call]

    async def alternate(
        self, subject: Callable[[], Awaitable[float]], baseline: Callable[[], Awaitable[float]]
    ) -> tuple[float, float]:
        """Median of ``repeat`` runs of each, interleaved (baseline, subject, baseline, ...)
        on an emptied server, so a slow spell of the machine hits both alike."""
        subjects: list[float] = []
        baselines: list[float] = []
        for _ in range(self.repeat):
            await self.flush()
            baselines.append(await baseline())
            await self.flush()
            subjects.append(await subject())
        return statistics.median(subjects), statistics.median(baselines)


def percentile(data: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the closest ranks."""
    if not data:
        raise ValueError("percentile of no data")
    ordered = sorted(data)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def child_command(*args: str) -> list[str]:
    """The command line of a benchmark worker process (see ``benchmarks.child``)."""
    return [sys.executable, "-m", "benchmarks.child", *args]


def _round(x: float) -> float:
    """Four significant digits: more would be noise."""
    return float(f"{x:.4g}")
