"""The task model: public Structs (TaskInfo, QueueInfo, ...), states and the actions
each state allows, and option normalisation.

Everything here is pure: no I/O. Times cross the API as timezone-aware UTC datetimes
and live in Redis as integer epoch milliseconds; durations cross the API as seconds.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import msgspec

from .errors import InvalidOption, InvalidQueueName

__all__ = [
    "DailyStats",
    "QueueInfo",
    "State",
    "TaskInfo",
    "WorkerInfo",
]

_QUEUE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")

DEFAULT_QUEUE = "default"
DEFAULT_MAX_RETRY = 25
DEFAULT_TIMEOUT = 1800.0


class State(StrEnum):
    """Where a task is in its life. Compares equal to its plain string value."""

    SCHEDULED = "scheduled"
    PENDING = "pending"
    ACTIVE = "active"
    RETRY = "retry"
    ARCHIVED = "archived"
    COMPLETED = "completed"


class Action(StrEnum):
    """What an operator may do to a task: to one, or to every task of a queue in one
    state (all but ``cancel``)."""

    RUN = "run"
    ARCHIVE = "archive"
    DELETE = "delete"
    CANCEL = "cancel"


# The states each action accepts: the one table behind the Inspector (which enforces
# it), the CLI's choices and the dashboard's buttons. An active task is only ever
# cancelled: its worker owns it. Cancel accepts a task that has not ended: a waiting one
# is archived at once, an active one has its handler cancelled.
ACTION_STATES: MappingProxyType[Action, tuple[State, ...]] = MappingProxyType({
    Action.RUN: (State.SCHEDULED, State.RETRY, State.ARCHIVED),
    Action.ARCHIVE: (State.PENDING, State.SCHEDULED, State.RETRY),
    Action.DELETE: (State.PENDING, State.SCHEDULED, State.RETRY, State.ARCHIVED, State.COMPLETED),
    Action.CANCEL: (State.PENDING, State.ACTIVE, State.SCHEDULED, State.RETRY),
})  # fmt: skip


def actions_for(state: str) -> tuple[Action, ...]:
    """The actions a task in ``state`` accepts, in ``Action`` order."""
    return tuple(a for a, states in ACTION_STATES.items() if state in states)


class TaskInfo(msgspec.Struct, kw_only=True):
    """A snapshot of one task, as returned by ``enqueue`` and the Inspector."""

    id: str
    queue: str
    type: str
    payload: Any = None
    state: str = State.PENDING.value
    max_retry: int = DEFAULT_MAX_RETRY
    retried: int = 0
    last_error: str | None = None
    last_failed_at: datetime | None = None
    timeout: float | None = None
    deadline: datetime | None = None
    next_process_at: datetime | None = None
    completed_at: datetime | None = None
    result: Any = None
    enqueued_at: datetime | None = None
    retention: float = 0.0
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    progress: Any = None
    priority: int = 0
    limit_key: str | None = None
    flow_id: str | None = None


class QueueInfo(msgspec.Struct, kw_only=True):
    """Sizes and counters of one queue, as returned by ``Inspector.queue_info``."""

    queue: str
    pending: int = 0
    active: int = 0
    scheduled: int = 0
    retry: int = 0
    archived: int = 0
    completed: int = 0
    paused: bool = False
    processed: int = 0
    failed: int = 0
    processed_total: int = 0
    failed_total: int = 0
    latency: float = 0.0
    memory_bytes: int = 0


class DailyStats(msgspec.Struct, kw_only=True):
    """Processed and failed attempts of one queue on one UTC day."""

    date: str
    processed: int
    failed: int


class WorkerInfo(msgspec.Struct, kw_only=True):
    """A live worker, as seen by ``Inspector.workers``."""

    id: str
    host: str
    pid: int
    queues: dict[str, float]
    concurrency: int
    started_at: datetime
    active: list[TaskInfo] = msgspec.field(default_factory=list)


# -- validation and conversion helpers --------------------------------------------------


def check_queue_name(name: object) -> str:
    """Return ``name`` if it is a valid queue name, else raise ``InvalidQueueName``."""
    if not isinstance(name, str) or not _QUEUE_RE.fullmatch(name):
        raise InvalidQueueName(
            f"invalid queue name {name!r}: use 1-100 characters of [A-Za-z0-9_.:-]"
        )
    return name


def seconds(value: object, what: str, *, allow_zero: bool = True) -> float:
    """Normalise a duration given as int, float or timedelta into seconds."""
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        result = float(value)
    else:
        raise InvalidOption(f"{what} must be seconds (int, float or timedelta), got {value!r}")
    if result != result or result in (float("inf"), float("-inf")):
        raise InvalidOption(f"{what} must be a finite number of seconds, got {value!r}")
    if result < 0 or (result == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidOption(f"{what} must be {bound} seconds, got {value!r}")
    return result


def aware(value: object, what: str) -> datetime:
    """Check that ``value`` is a timezone-aware datetime and return it in UTC."""
    if not isinstance(value, datetime):
        raise InvalidOption(f"{what} must be a timezone-aware datetime, got {value!r}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise InvalidOption(
            f"{what} must be timezone-aware (naive datetimes are ambiguous), got {value!r}"
        )
    return value.astimezone(UTC)


def to_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def from_ms(value: int | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromtimestamp(value / 1000, tz=UTC)
