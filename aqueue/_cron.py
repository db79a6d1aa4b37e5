"""Cron schedules as registered on a Mux: parsing, validation and tick arithmetic.

A tick is identified by its time in epoch milliseconds, computed from the spec alone, so
every worker computes the same ticks and the enqueue script can refuse a tick that was
already enqueued: that is how any number of schedulers fire each tick exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from ._options import check_options
from .errors import InvalidCron, InvalidOption

if TYPE_CHECKING:
    from croniter import croniter


def _croniter() -> type[croniter]:
    """croniter, imported on first use: with its dependencies it weighs about a
    megabyte, which a worker process without cron entries need not carry."""
    from croniter import croniter

    return croniter


CATCH_UP = ("latest", "skip", "all")


class CronRun(msgspec.Struct, kw_only=True):
    """One enqueue by a cron entry: the tick it was for and the task it wrote."""

    tick: datetime
    task_id: str


class CronEntry(msgspec.Struct, kw_only=True):
    """A cron schedule as ``Inspector.cron_entries`` shows it (once, however many
    workers run it)."""

    name: str
    spec: str
    tz: str
    task: str
    queue: str
    next_run: datetime | None = None
    last_run: datetime | None = None
    history: list[CronRun] = msgspec.field(default_factory=list)


def check_spec(spec: object, tz: object) -> ZoneInfo:
    """Raise ``InvalidCron`` naming the bad spec or time zone; return the zone."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidCron(f"invalid cron spec {spec!r}: expected a string like '*/5 * * * *'")
    try:
        zone = ZoneInfo(str(tz))
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidCron(f"unknown time zone {tz!r} for cron spec {spec!r}") from None
    fields = spec.split()
    croniter = _croniter()
    if len(fields) not in (5, 6) or not croniter.is_valid(spec):
        raise InvalidCron(
            f"invalid cron spec {spec!r}: use 5 fields (minute hour day month weekday) "
            "or 6 with seconds last, croniter syntax"
        )
    return zone


class CronSpec:
    """One schedule: which task to enqueue, with what payload and options, when."""

    __slots__ = (
        "catch_up",
        "catch_up_max",
        "name",
        "options",
        "payload",
        "spec",
        "task",
        "tz",
        "zone",
    )

    def __init__(
        self,
        name: str,
        spec: str,
        task: Any,
        payload: Any,
        options: Mapping[str, Any],
        *,
        tz: str = "UTC",
        catch_up: str = "latest",
        catch_up_max: int = 100,
    ) -> None:
        self.zone = check_spec(spec, tz)
        if not name or "|" in name:
            raise InvalidOption(f"cron entry name must be non-empty without '|', got {name!r}")
        if catch_up not in CATCH_UP:
            raise InvalidOption(f"catch_up must be one of {CATCH_UP}, got {catch_up!r}")
        if not isinstance(catch_up_max, int) or catch_up_max < 1:
            raise InvalidOption(f"catch_up_max must be an int >= 1, got {catch_up_max!r}")
        if "task_id" in options:
            raise InvalidOption(
                f"cron entry {name!r} cannot fix a task_id: each tick is a new task"
            )
        check_options(options, f"cron entry {name!r}")
        self.name = name
        self.spec = spec
        self.tz = str(tz)
        self.task = task  # a Handler or a type name
        self.payload = payload
        self.options = dict(options)
        self.catch_up = catch_up
        self.catch_up_max = catch_up_max

    @property
    def task_type(self) -> str:
        return self.task if isinstance(self.task, str) else str(self.task.name)

    def next_after(self, ms: int) -> int:
        """The first tick strictly after ``ms``."""
        it = _croniter()(self.spec, datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(self.zone))
        return int(it.get_next(datetime).timestamp() * 1000)

    def ticks_between(self, after_ms: int, until_ms: int, limit: int) -> list[int]:
        """Ticks in ``(after_ms, until_ms]``, the latest ``limit`` of them, oldest first.

        Walks backwards from ``until_ms``, so a long gap (every second, down for a
        month) costs ``limit`` steps, not millions.
        """
        base = datetime.fromtimestamp(until_ms / 1000 + 1, tz=UTC).astimezone(self.zone)
        it = _croniter()(self.spec, base)
        ticks: list[int] = []
        while len(ticks) < limit:
            tick = int(it.get_prev(datetime).timestamp() * 1000)
            if tick <= after_ms:
                break
            if tick <= until_ms:
                ticks.append(tick)
        return ticks[::-1]

    def definition(self) -> dict[str, str]:
        return {"spec": self.spec, "tz": self.tz, "task": self.task_type}
