"""Preparing tasks for the enqueue script: the one path from a task, a payload and
options to the script call and the commands that go with it, shared by ``Client`` and
the cron scheduler.

Everything is checked here, before any byte is written: the task (a handler or a type
name), its options (call > handler > defaults, see ``_options``), and its payload
(encoded, within the size limit, and decodable by the handler's annotation). Beside
each call go the commands that announce it: the queue's registration in the queue set
(on first use, and again now and then) and, for a delayed task, a notice on the
schedule channel that wakes every worker's forwarder in time for it.

No I/O: the caller sends what is built here through its Broker and turns each task's
reply into a ``TaskInfo`` or an error with ``outcome``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import msgspec

from ._codec import Body, decode_value, decoder_for, encode_message, encode_payload, unique_digest
from ._mux import Handler
from ._options import Resolved, check_options, new_task_id, resolve
from ._redis import scripts
from ._redis.keys import queue_keys, queues_key, schedule_channel
from ._redis.scripts import Call
from ._task import State, TaskInfo, from_ms
from .errors import AqueueError, DuplicateTask, InvalidOption, InvalidPayload, TaskIdConflict

DEFAULT_MAX_PAYLOAD = 1 << 20
# Tasks per enqueue script call: bounds how long one call holds the server.
BATCH = 500
# A producer registers the queues it writes to again after this many seconds, so that a
# queue deleted and then used again by a long-lived producer is listed again.
REGISTER_EVERY = 60.0
_NO_OPTIONS: dict[str, Any] = {}
# Option sets merged and kept per Producer (``_with_options``) before it starts over.
_MAX_TEMPLATES = 1024
# Options whose values differ from call to call, or are unhashable: merged each time.
_MERGED_EACH_TIME = frozenset({"process_in", "process_at", "deadline", "headers"})

# A plain command sent with the script calls (see ``Broker.scripts``).
Command = tuple[Any, ...]


class Prepared:
    """One task, checked and encoded: its type, encoded payload, resolved options, its
    arguments in an enqueue call (``scripts.enqueue``), when it was prepared (ms), and
    whether it waits in a lane of flow control (``laned``)."""

    __slots__ = ("args", "data", "laned", "now", "opts", "type")

    def __init__(
        self,
        task_type: str,
        data: bytes,
        opts: Resolved,
        args: list[Any],
        now: int,
        laned: bool = False,
    ) -> None:
        self.type, self.data, self.opts, self.args, self.now = task_type, data, opts, args, now
        self.laned = laned


class Batch(NamedTuple):
    """What to send for many tasks (``Producer.many``)."""

    calls: list[Call]  # one enqueue call per queue and ``BATCH`` tasks
    order: list[list[int]]  # per call, the indexes of its tasks in the prepared list
    extra: list[Command]  # registrations, then notices
    new: list[str]  # the queues ``extra`` registers: pass to ``registered`` once sent


class Producer:
    """Prepares tasks for the keys under ``prefix``, with ``defaults`` as the options of a
    task enqueued by type name (and the fallback for handler options). Remembers which
    queues it registered lately. ``defaults`` and ``max_payload`` are the caller's to
    check (``Client`` does, naming its own arguments)."""

    def __init__(
        self,
        prefix: str,
        *,
        defaults: Mapping[str, Any] | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self.prefix = prefix
        self.defaults: Mapping[str, Any] = dict(defaults or {})
        self.max_payload = max_payload
        # id(handler options) -> (those options, their resolved template): see _resolved.
        self._templates: dict[int, tuple[Mapping[str, Any], Resolved]] = {}
        # The same for a call's own options, by their names, types and values.
        self._explicit: dict[tuple[Any, ...], tuple[Mapping[str, Any], Resolved]] = {}
        self._known_queues: dict[str, float] = {}  # queue -> when it was last registered

    def prepare(
        self,
        task: Handler[Any, Any] | str,
        payload: Any,
        options: Mapping[str, Any],
        now: int,
        *,
        step: str = "",
        inputs_as_payload: bool = False,
        task_id: str | None = None,
        retention: float | None = None,
    ) -> Prepared:
        """Check and encode one task; raise ``InvalidOption`` or ``InvalidPayload``
        naming the bad value. A workflow's step names itself (``step``: "<flow id>:
        <index>"); one that receives its inputs as payload has none to check yet."""
        if isinstance(task, Handler):
            task_type, handler_opts = task.name, task.options
        elif isinstance(task, str) and task and task.isprintable():
            task_type, handler_opts = task, _NO_OPTIONS
        else:
            raise InvalidOption(
                f"task must be a Handler or a non-empty type name without control "
                f"characters, got {task!r}"
            )
        if options:
            opts = self._with_options(options, handler_opts, now, payload)
        elif callable(handler_opts.get("limit_key")):
            # The key comes from the payload: no template to reuse.
            opts = resolve(options, handler_opts, self.defaults, now, payload)
        else:
            opts = self._resolved(handler_opts, now)
        if task_id is not None:  # a workflow's step: the flow chose these
            opts.task_id = task_id
        if retention is not None:
            opts.retention = retention
        data = encode_payload(payload, self.max_payload)
        if isinstance(task, Handler) and not inputs_as_payload:
            check_payload(task, payload, data)
        digest = unique_digest(task_type, data) if opts.unique else ""
        body = Body(
            type=task_type,
            payload=msgspec.Raw(data),
            timeout=opts.timeout,
            deadline=opts.deadline,
            retention=opts.retention,
            enqueued_at=now,
            headers=opts.headers,
        )
        message = encode_message(opts.max_retry, digest, body, opts.priority, opts.limit_key, step)
        args = [opts.task_id, message, opts.due]
        if digest:
            args += [digest, int(opts.unique * 1000)]
        # A task with a priority or a key waits in its lane; so does one whose handler
        # has limits (the script would otherwise move it there at its first claim).
        laned = opts.priority > 0 or bool(opts.limit_key)
        if isinstance(task, Handler) and task.limits is not None:
            laned = True
        return Prepared(task_type, data, opts, args, now, laned)

    def _with_options(
        self, options: Mapping[str, Any], handler_opts: Mapping[str, Any], now: int, payload: Any
    ) -> Resolved:
        """The options of a task enqueued with options of its own. Checking and merging
        them costs more than the rest of an enqueue, and a caller passes the same ones
        again and again (``queue=``, ``unique=``): each set is checked and merged once
        per handler (values of the same type and value merge alike). A task id is the
        task's own: checked each time, not part of the set. Options that differ from
        call to call (times, headers) and a limit key taken from the payload are merged
        each time."""
        key: tuple[Any, ...] | None = None
        cached = None
        if _MERGED_EACH_TIME.isdisjoint(options) and _reusable(handler_opts, self.defaults):
            items = ((n, type(v), v) for n, v in options.items() if n != "task_id")
            key = (id(handler_opts), *items)
            try:
                cached = self._explicit.get(key)
            except TypeError:  # an unhashable value: not a valid one either
                key = None
        task_id = options.get("task_id")
        if cached is None or cached[0] is not handler_opts:
            check_options(options, "enqueue")
            opts = resolve(options, handler_opts, self.defaults, now, payload)
            if key is None:
                return opts
            if len(self._explicit) >= _MAX_TEMPLATES:
                self._explicit.clear()
            cached = self._explicit[key] = (handler_opts, opts)
        elif task_id is not None:
            check_options({"task_id": task_id}, "enqueue")
        # A copy: the caller may change it (a workflow's step sets its own retention).
        t = cached[1]
        return Resolved(
            t.queue, t.max_retry, t.timeout, t.deadline, 0, t.unique, task_id or new_task_id(),
            t.retention, t.headers, t.priority, t.limit_key,
        )  # fmt: skip

    def _resolved(self, handler_opts: Mapping[str, Any], now: int) -> Resolved:
        """The options of a task enqueued without options of its own: the handler's and
        the defaults, merged once per handler instead of once per task (only the task
        id differs), unless they schedule relative to now."""
        cached = self._templates.get(id(handler_opts))
        if cached is None or cached[0] is not handler_opts:
            template = resolve({}, handler_opts, self.defaults, now)
            timed = any(
                layer.get(name) is not None
                for layer in (handler_opts, self.defaults)
                for name in ("process_in", "process_at")
            )
            if timed:
                return template
            cached = self._templates[id(handler_opts)] = (handler_opts, template)
        t = cached[1]
        return Resolved(
            t.queue, t.max_retry, t.timeout, t.deadline, 0, t.unique, new_task_id(),
            t.retention, t.headers, t.priority, t.limit_key,
        )  # fmt: skip

    # -- what to send ------------------------------------------------------------------

    def one(self, p: Prepared) -> tuple[Call, list[Command], list[str]]:
        """The enqueue call of one task, its extra commands and the queues they
        register: the same as ``many`` sends for one task, with less bookkeeping."""
        queue, due = p.opts.queue, p.opts.due
        k = queue_keys(self.prefix, queue)
        call = scripts.enqueue(k, p.now, p.opts.unique > 0, p.args, p.laned)
        if self._known_queues.get(queue, 0.0) > time.monotonic() - REGISTER_EVERY:
            extra: list[Command] = []
            new: list[str] = []
        else:
            extra, new = self.registrations((queue,))
        if due:
            extra.append(self.notice(queue, due))
        return call, extra, new

    def many(self, prepared: Sequence[Prepared], now: int) -> Batch:
        """The enqueue calls of many tasks: one per queue and ``BATCH`` tasks; with the
        registrations of their queues and a notice of each queue's earliest delayed task."""
        by_queue: dict[str, list[int]] = {}
        for i, p in enumerate(prepared):
            by_queue.setdefault(p.opts.queue, []).append(i)
        calls: list[Call] = []
        order: list[list[int]] = []
        for queue, idxs in by_queue.items():
            k = queue_keys(self.prefix, queue)
            for start in range(0, len(idxs), BATCH):
                chunk = idxs[start : start + BATCH]
                unique = any(prepared[i].opts.unique for i in chunk)
                tasks: list[Any] = []
                for i in chunk:
                    tasks += prepared[i].args
                    if unique and not prepared[i].opts.unique:
                        tasks += scripts.NO_LOCK
                lanes = any(prepared[i].laned for i in chunk)
                calls.append(scripts.enqueue(k, now, unique, tasks, lanes))
                order.append(chunk)
        earliest: dict[str, int] = {}
        for p in prepared:
            if p.opts.due and p.opts.due < earliest.get(p.opts.queue, p.opts.due + 1):
                earliest[p.opts.queue] = p.opts.due
        extra, new = self.registrations(by_queue)
        extra += [self.notice(queue, due) for queue, due in earliest.items()]
        return Batch(calls, order, extra, new)

    def cron(
        self, p: Prepared, entry: str, tick: int, history: int
    ) -> tuple[Call, list[Command], list[str]]:
        """The enqueue call of one cron tick (written unless the tick already was), the
        registration of its queue and the queues that registers. The notice of a delayed
        task is the caller's to send once the tick was written (``notice``): of all the
        schedulers firing a tick, only one writes it."""
        task = p.args if p.opts.unique else [*p.args, *scripts.NO_LOCK]
        k = queue_keys(self.prefix, p.opts.queue)
        call = scripts.enqueue_cron(k, p.now, entry, tick, history, task)
        extra, new = self.registrations((p.opts.queue,))
        return call, extra, new

    def registrations(self, queues: Iterable[str]) -> tuple[list[Command], list[str]]:
        """The command registering those of ``queues`` not registered lately, and
        their names (pass them to ``registered`` once the command was sent)."""
        stale = time.monotonic() - REGISTER_EVERY
        new = [q for q in queues if self._known_queues.get(q, stale) <= stale]
        return ([("SADD", queues_key(self.prefix), *new)] if new else []), new

    def registered(self, queues: list[str]) -> None:
        """``queues`` were registered just now."""
        if queues:
            self._known_queues.update(dict.fromkeys(queues, time.monotonic()))

    def notice(self, queue: str, due: int) -> Command:
        """Tells the workers of ``queue`` that a task is due at ``due`` (ms), so that a
        forwarder asleep until later wakes in time for it."""
        return ("PUBLISH", schedule_channel(self.prefix), f"{queue}|{due}")


def _reusable(handler_opts: Mapping[str, Any], defaults: Mapping[str, Any]) -> bool:
    """Whether options merged over these layers can hold for another task: none of them
    schedules relative to now, and the handler takes no limit key from the payload."""
    for layer in (handler_opts, defaults):
        if layer.get("process_in") is not None or layer.get("process_at") is not None:
            return False
    return not callable(handler_opts.get("limit_key"))


def outcome(p: Prepared, reply: Any) -> TaskInfo | AqueueError:
    """The task as written, or the error for the script's refusal."""
    o = p.opts
    if reply != scripts.WRITTEN:
        kind, other = scripts.parse_refused(reply)
        if kind == "dup":
            return DuplicateTask(
                f"a task of type {p.type!r} with an equal payload is already in queue "
                f"{o.queue!r} (task {other!r}) and holds its unique lock"
            )
        return TaskIdConflict(
            f"task id {o.task_id!r} is already used in queue {o.queue!r} by a task in "
            f"state {other!r}"
        )
    return TaskInfo(
        id=o.task_id,
        queue=o.queue,
        type=p.type,
        payload=decode_value(p.data),
        state=_SCHEDULED if o.due else _PENDING,
        max_retry=o.max_retry,
        timeout=o.timeout or None,
        deadline=from_ms(o.deadline) if o.deadline else None,
        next_process_at=from_ms(o.due) if o.due else None,
        enqueued_at=_moment(p.now),
        retention=o.retention,
        headers=dict(o.headers) if o.headers else {},  # the caller's own: never a template's
        priority=o.priority,
        limit_key=o.limit_key or None,
    )


_SCHEDULED, _PENDING = State.SCHEDULED.value, State.PENDING.value
# The last enqueue time made a datetime: tasks enqueued in the same millisecond (most of
# those of a busy producer) share it, as datetimes cannot change.
_last_moment: tuple[int, datetime | None] = (0, None)


def _moment(ms: int) -> datetime | None:
    global _last_moment
    last = _last_moment  # one read: other threads' Clients may replace it meanwhile
    if last[0] != ms:
        last = _last_moment = (ms, from_ms(ms))
    return last[1]


def check_payload(handler: Handler[Any, Any], payload: Any, data: bytes) -> None:
    """Refuse, before writing, a payload the handler could not decode."""
    if not handler.takes_payload:
        if payload is not None:
            raise InvalidPayload(
                f"handler {handler.name!r} takes no payload, got {_short(payload)}"
            )
        return
    tp = handler.payload_type
    if tp is Any or tp is bytes:
        return
    try:
        decoder_for(tp).decode(data)
    except msgspec.ValidationError as exc:
        raise InvalidPayload(
            f"payload {_short(payload)} does not match {getattr(tp, '__name__', tp)!s} "
            f"of handler {handler.name!r}: {exc}"
        ) from None


def now_ms() -> int:
    return int(time.time() * 1000)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
