"""Flow control, the model: rates, limit declarations and their checks (no I/O).

A limit is declared in Python (``Rate``, ``concurrency_limit``, ``limit_queue``),
checked here before anything is written, and handed to the Lua scripts as the short
text ``LimitSpec.encode`` makes: the scripts enforce limits at claim time, so what
they read must be exact and cheap to parse.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from .errors import InvalidOption

__all__ = ["LimitInfo", "LimitSpec", "Rate"]

# At most 15 digits: more is no real limit, and would reach Python's int parsing limits.
_RATE_RE = re.compile(r"\s*([0-9]{1,15})\s*/\s*([smh])\s*")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_UNIT_OF = {per: unit for unit, per in _UNITS.items()}
MAX_LIMIT_KEY = 200


class Rate(msgspec.Struct, frozen=True):
    """At most ``limit`` task starts in any window of ``per`` seconds.

    ``per`` may be given as an int or a ``timedelta``; it is kept as float seconds so
    that ``Rate(90, per=60)``, ``Rate(90, per=timedelta(minutes=1))`` and
    ``Rate.parse("90/m", ...)`` are one and the same value (equal and equally hashed).
    """

    limit: int
    per: float = 1.0

    if TYPE_CHECKING:  # the constructor takes more than the stored field type

        def __init__(self, limit: int, per: float | timedelta = 1.0) -> None: ...

    def __post_init__(self) -> None:
        if not isinstance(self.limit, int) or isinstance(self.limit, bool) or self.limit < 1:
            raise InvalidOption(f"Rate limit must be an int >= 1, got {self.limit!r}")
        per: object = self.per
        if isinstance(per, timedelta):
            per = per.total_seconds()
        elif isinstance(per, int) and not isinstance(per, bool):
            per = float(per)
        if not isinstance(per, float) or not math.isfinite(per) or per <= 0:
            raise InvalidOption(
                f"Rate per must be a finite number of seconds > 0, got {self.per!r}"
            )
        msgspec.structs.force_setattr(self, "per", per)

    @classmethod
    def parse(cls, value: object, where: str) -> Rate:
        """``value`` as a Rate: a Rate, or a string ``"N/s"``, ``"N/m"`` or ``"N/h"``.

        ``where`` names the caller (``"task 'x'"``, ``"queue 'bulk'"``) in the error.
        """
        if isinstance(value, Rate):
            return value
        match = _RATE_RE.fullmatch(value) if isinstance(value, str) else None
        if match is None or int(match[1]) < 1:
            raise InvalidOption(
                "rate_limit must be a Rate or a string 'N/s', 'N/m' or 'N/h' with N an "
                f"int >= 1, got {value!r} ({where})"
            )
        return cls(int(match[1]), per=_UNITS[match[2]])

    def __str__(self) -> str:
        unit = _UNIT_OF.get(self.per)
        return f"{self.limit}/{unit}" if unit else f"{self.limit}/{self.per:g}s"


def check_concurrency(value: object, where: str) -> int:
    """``value`` if it is a valid concurrency limit: an int >= 1."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise InvalidOption(f"concurrency_limit must be an int >= 1, got {value!r} ({where})")


def check_limit_key(value: object, where: str) -> str:
    """``value`` if it is a valid limit key. Control characters are refused because
    the scripts join keys with bytes ``\\1`` and ``\\2``: a key holding one would be
    read back as two."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_LIMIT_KEY
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        raise InvalidOption(
            f"limit_key must be a string of 1-{MAX_LIMIT_KEY} characters without control "
            f"characters, got {value!r} ({where})"
        )
    return value


class LimitSpec(NamedTuple):
    """The limits of one queue or one task type, as declared by a Mux."""

    rate: Rate | None
    concurrency: int | None

    def encode(self) -> str:
        """``"<rate limit> <rate per in ms> <concurrency>"``, 0 for an absent part:
        the text the scripts read (``Rate(10)`` alone is ``"10 1000 0"``)."""
        limit, per_ms = 0, 0
        if self.rate is not None:
            # At least 1 ms: a zero window would let every start through.
            limit, per_ms = self.rate.limit, max(1, round(self.rate.per * 1000))
        return f"{limit} {per_ms} {self.concurrency or 0}"

    @classmethod
    def decode(cls, text: str | bytes) -> LimitSpec:
        """The inverse of ``encode`` (``per`` to the millisecond). Text that is not
        three ints gives no limits: a reader must not fail on a foreign declaration."""
        try:
            if isinstance(text, bytes):
                text = text.decode("ascii")
            limit, per_ms, concurrency = (int(part) for part in text.split())
            rate = Rate(limit, per=per_ms / 1000) if limit >= 1 and per_ms >= 1 else None
        except (ValueError, UnicodeDecodeError, OverflowError):
            return cls(None, None)
        return cls(rate, concurrency if concurrency >= 1 else None)


def limit_spec(rate_limit: object, concurrency_limit: object, where: str) -> LimitSpec | None:
    """Check a ``rate_limit``/``concurrency_limit`` pair; None when neither is given."""
    if rate_limit is None and concurrency_limit is None:
        return None
    return LimitSpec(
        None if rate_limit is None else Rate.parse(rate_limit, where),
        None if concurrency_limit is None else check_concurrency(concurrency_limit, where),
    )


class LimitInfo(msgspec.Struct, kw_only=True):
    """One declared limit and how busy it is now, as returned by ``Inspector.limits``.

    ``queue`` is the queue limited, or for a task type's limit the queue of its
    handler; ``task_type`` is None for a queue's own limit. ``running`` counts the
    attempts holding a concurrency slot now, summed over limit keys; ``keys`` counts
    the limit keys that have pending or active tasks; ``held_back`` counts the claims
    this limit held back since it was first declared, over every worker (a counter,
    for metrics).
    """

    queue: str
    task_type: str | None
    rate_limit: Rate | None
    concurrency_limit: int | None
    running: int = 0
    keys: int = 0
    held_back: int = 0

    @property
    def slots(self) -> int:
        """The concurrency slots the limit allows now (0 without a concurrency limit): a
        queue's limit holds for the whole queue, a task type's for each limit key in use
        (at least one: tasks without a key share one)."""
        if self.concurrency_limit is None:
            return 0
        keys = 1 if self.task_type is None else max(1, self.keys)
        return self.concurrency_limit * keys
