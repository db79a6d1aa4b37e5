"""Enqueue options: validation and resolution.

An option comes from, in order of precedence: the ``enqueue``/``Job`` call, the
handler's registration (when the task is enqueued through its handler), the Client's
defaults. Everything is checked before any byte is written.

``limit_key`` is the one option that may depend on the payload: on a handler it may be
a callable ``(payload) -> str``, applied at enqueue (``resolve``), so one registration
can key each task by its tenant, user, ...
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._limits import check_limit_key
from ._task import DEFAULT_MAX_RETRY, DEFAULT_QUEUE, DEFAULT_TIMEOUT, aware, check_queue_name, to_ms
from ._task import seconds as _seconds
from .errors import InvalidOption

OPTION_NAMES = frozenset(
    {
        "queue",
        "max_retry",
        "timeout",
        "deadline",
        "process_in",
        "process_at",
        "unique",
        "task_id",
        "retention",
        "headers",
        "priority",
        "limit_key",
    }
)
MAX_PRIORITY = 9


@dataclass(slots=True)
class Resolved:
    queue: str
    max_retry: int
    timeout: float  # seconds, 0 = none
    deadline: int  # epoch ms, 0 = none
    due: int  # epoch ms, 0 = now
    unique: float  # seconds, 0 = no lock
    task_id: str
    retention: float
    headers: dict[str, str] | None
    # Last and defaulted, so that positional constructions of the fields above still work.
    priority: int = 0
    limit_key: str = ""  # "" = none


def check_options(opts: Mapping[str, Any], where: str, *, handler: bool = False) -> None:
    """Validate every option present in ``opts``; raise naming the bad value.

    ``handler`` says ``opts`` are a handler's registration options, the one place
    where ``limit_key`` may be a callable.
    """
    unknown = set(opts) - OPTION_NAMES
    if unknown:
        raise InvalidOption(f"unknown option(s) {sorted(unknown)} for {where}")
    for name, value in opts.items():
        if value is None:
            continue
        if name == "queue":
            check_queue_name(value)
        elif name == "max_retry":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidOption(f"max_retry must be an int >= 0, got {value!r} ({where})")
        elif name in ("timeout", "unique", "process_in", "retention"):
            _seconds(value, f"{name} ({where})", allow_zero=name not in ("timeout", "unique"))
        elif name in ("deadline", "process_at"):
            aware(value, f"{name} ({where})")
        elif name == "task_id":
            if not isinstance(value, str) or not value or len(value) > 200 or "|" in value:
                raise InvalidOption(
                    f"task_id must be a non-empty string of at most 200 characters "
                    f"without '|', got {value!r} ({where})"
                )
        elif name == "headers" and not _str_map(value):
            raise InvalidOption(f"headers must be a mapping of str to str, got {value!r} ({where})")
        elif name == "priority":
            check_priority(value, where)
        elif name == "limit_key":
            _check_limit_key_option(value, where, handler)
    if opts.get("process_in") is not None and opts.get("process_at") is not None:
        raise InvalidOption(f"give process_in or process_at, not both ({where})")


def check_priority(value: object, where: str) -> int:
    """``value`` if it is a priority: the scripts keep one lane per level, 0 to 9."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_PRIORITY:
        return value
    raise InvalidOption(
        f"priority must be an int from 0 to {MAX_PRIORITY}, got {value!r} ({where})"
    )


def _check_limit_key_option(value: object, where: str, handler: bool) -> None:
    if handler and callable(value):
        return  # checked on each result, at enqueue
    if handler and not isinstance(value, str):
        raise InvalidOption(
            f"limit_key must be a str or a callable (payload) -> str, got {value!r} ({where})"
        )
    check_limit_key(value, where)


def _key_of(fn: Callable[[Any], object], payload: Any) -> str:
    """The limit key a handler's ``limit_key`` callable gives ``payload``."""
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        key = fn(payload)
    except Exception as exc:  # the user's code: any failure is a bad option value
        raise InvalidOption(
            f"limit_key callable {name} raised {type(exc).__name__}: {exc} (enqueue)"
        ) from exc
    return check_limit_key(key, f"returned by the limit_key callable {name}")


_ID_BYTES = 12  # 16 characters of base64, no padding
_ids: list[str] = []


def _forget_ids() -> None:
    _ids.clear()  # a forked child must not hand out its parent's next ids


os.register_at_fork(after_in_child=_forget_ids)


def new_task_id() -> str:
    """16 URL-safe characters, 96 random bits: collisions are out of reach (about 2**48
    ids before one is likely) and, as each id is stored three times per task (queue,
    task hash, state hash), half the length of a hex uuid4 saves about 50 bytes of
    server memory per task. Ids are made from the OS's randomness 256 at a time: one
    read and one encoding per id were a visible share of one enqueue."""
    try:
        return _ids.pop()  # atomic: Clients in several threads may share the list
    except IndexError:
        text = base64.urlsafe_b64encode(os.urandom(_ID_BYTES * 256)).decode()
        _ids.extend(text[i : i + 16] for i in range(16, len(text), 16))
        return text[:16]


def resolve(
    explicit: Mapping[str, Any],
    handler: Mapping[str, Any],
    defaults: Mapping[str, Any],
    now: int,
    payload: Any = None,
) -> Resolved:
    """Merge the three layers (explicit wins) into concrete values; ``payload`` is
    what a ``limit_key`` callable is applied to."""

    def pick(name: str) -> Any:
        for layer in (explicit, handler, defaults):
            value = layer.get(name)
            if value is not None:
                return value
        return None

    # process_in and process_at are one choice: an explicit one replaces a default one.
    timing = next(
        (
            layer
            for layer in (explicit, handler, defaults)
            if layer.get("process_in") is not None or layer.get("process_at") is not None
        ),
        {},
    )
    due = 0
    if timing.get("process_at") is not None:
        # Rounded up to the next millisecond: the task must never start before its
        # time, and the forwarder compares whole milliseconds.
        due = math.ceil(aware(timing["process_at"], "process_at").timestamp() * 1000)
    elif timing.get("process_in") is not None:
        due = now + int(_seconds(timing["process_in"], "process_in") * 1000)
    if due <= now:
        due = 0

    timeout = pick("timeout")
    deadline = pick("deadline")
    if timeout is None and deadline is None:
        timeout = DEFAULT_TIMEOUT
    max_retry = pick("max_retry")
    headers = pick("headers")
    priority = pick("priority")
    limit_key = pick("limit_key")
    if callable(limit_key):
        limit_key = _key_of(limit_key, payload)
    return Resolved(
        queue=pick("queue") or DEFAULT_QUEUE,
        max_retry=DEFAULT_MAX_RETRY if max_retry is None else max_retry,
        timeout=_seconds(timeout, "timeout") if timeout is not None else 0.0,
        deadline=to_ms(aware(deadline, "deadline")) if deadline is not None else 0,
        due=due,
        unique=_seconds(pick("unique"), "unique") if pick("unique") is not None else 0.0,
        task_id=explicit.get("task_id") or new_task_id(),
        retention=_seconds(pick("retention"), "retention") if pick("retention") else 0.0,
        headers=dict(headers) if headers else None,
        priority=0 if priority is None else priority,
        limit_key=limit_key or "",
    )


def _str_map(value: object) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )
