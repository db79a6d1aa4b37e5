"""The producer side: ``Client.enqueue`` and ``Client.enqueue_many``."""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Literal, TypeVar, overload

import anyio
import msgspec
import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.client import PubSub

from ._codec import (
    Body,
    decode_value,
    decoder_for,
    encode_message,
    encode_payload,
    unique_digest,
)
from ._inspector import cancel_task, get_task
from ._mux import Handler
from ._options import Resolved, check_options, new_task_id, resolve
from ._redis.broker import (
    DEFAULT_PREFIX,
    DEFAULT_URL,
    SCRIPTS,
    Broker,
    Call,
    Connected,
    ServerLike,
    redacted,
)
from ._redis.keys import QueueKeys, done_channel, queue_keys, queues_key, schedule_channel
from ._task import State, TaskInfo, check_queue_name, from_ms
from .errors import (
    AqueueError,
    DuplicateTask,
    InvalidPayload,
    ResultTimeout,
    TaskFailed,
    TaskIdConflict,
)

P = TypeVar("P")

DEFAULT_MAX_PAYLOAD = 1 << 20
# A client registers the queues it writes to again after this many seconds.
_REGISTER_EVERY = 60.0
# Client.result re-reads the task this often (s) if no notice arrives.
_RESULT_RECHECK = 5.0
# Tasks per enqueue script call: bounds how long one call holds the server.
_BATCH = 500
_NO_OPTIONS: dict[str, Any] = {}


class Job(Generic[P]):
    """One task for ``Client.enqueue_many``: a handler or type name, a payload, options."""

    __slots__ = ("options", "payload", "task")

    @overload
    def __init__(self, task: Handler[P, Any], payload: P = ..., **options: Any) -> None: ...
    @overload
    def __init__(self, task: str, payload: Any = None, **options: Any) -> None: ...
    def __init__(self, task: Handler[Any, Any] | str, payload: Any = None, **options: Any) -> None:
        self.task = task
        self.payload = payload
        self.options = options

    def __repr__(self) -> str:
        name = self.task if isinstance(self.task, str) else self.task.name
        return f"Job({name!r}, {self.payload!r}, **{self.options!r})"


class _Prepared:
    __slots__ = ("args", "data", "now", "opts", "type")

    def __init__(
        self, task_type: str, data: bytes, opts: Resolved, args: list[Any], now: int
    ) -> None:
        self.type, self.data, self.opts, self.args, self.now = task_type, data, opts, args, now


class Client(Connected):
    """Enqueues tasks. Cheap to create, connects on first use; share one per process.

    ``timeout`` bounds how long any call waits on an unreachable server before
    raising ``BrokerUnavailable``. ``defaults`` are the options of tasks enqueued by
    type name (and the fallback for handler options).
    """

    def __init__(
        self,
        url_or_redis: ServerLike = DEFAULT_URL,
        *,
        timeout: float = 5.0,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD,
        defaults: Mapping[str, Any] | None = None,
        prefix: str = DEFAULT_PREFIX,
        durable: bool = False,
    ) -> None:
        if not isinstance(max_payload_bytes, int) or max_payload_bytes <= 0:
            raise AqueueError(
                f"max_payload_bytes must be a positive int, got {max_payload_bytes!r}"
            )
        self._defaults = dict(defaults or {})
        # id(handler options) -> (those options, their resolved template): see _resolved.
        self._templates: dict[int, tuple[Mapping[str, Any], Resolved]] = {}
        check_options(self._defaults, "Client defaults")
        if "task_id" in self._defaults:
            raise AqueueError("task_id cannot be a Client default")
        self._broker = Broker(url_or_redis, timeout=timeout, prefix=prefix)
        self._max_payload = max_payload_bytes
        self._known_queues: dict[str, float] = {}  # queue -> when it was last registered
        self.durable = durable

    @overload
    async def enqueue(
        self, task: Handler[P, Any], payload: P = ..., *, durable: bool | None = ..., **options: Any
    ) -> TaskInfo: ...
    @overload
    async def enqueue(
        self, task: str, payload: Any = None, *, durable: bool | None = ..., **options: Any
    ) -> TaskInfo: ...
    async def enqueue(
        self,
        task: Handler[Any, Any] | str,
        payload: Any = None,
        *,
        durable: bool | None = None,
        **options: Any,
    ) -> TaskInfo:
        """Write one task in one round trip and return its ``TaskInfo``.

        Options: queue, max_retry, timeout, deadline, process_in, process_at, unique,
        task_id, retention, headers. Raises ``DuplicateTask`` or ``TaskIdConflict``
        when the server refuses it; nothing is written then. ``durable`` (default: the
        Client's) waits until the server's append-only file has the write (WAITAOF).
        """
        now = _now_ms()
        prepared = self._prepare(task, payload, options, now)
        infos = await self._write([prepared], now, durable)
        result = infos[0]
        if isinstance(result, AqueueError):
            raise result
        assert isinstance(result, TaskInfo)
        return result

    @overload
    async def enqueue_many(
        self,
        jobs: Iterable[Job[Any]],
        *,
        return_exceptions: Literal[False] = ...,
        durable: bool | None = ...,
    ) -> list[TaskInfo]: ...
    @overload
    async def enqueue_many(
        self,
        jobs: Iterable[Job[Any]],
        *,
        return_exceptions: Literal[True],
        durable: bool | None = ...,
    ) -> list[TaskInfo | AqueueError]: ...
    async def enqueue_many(
        self,
        jobs: Iterable[Job[Any]],
        *,
        return_exceptions: bool = False,
        durable: bool | None = None,
    ) -> list[TaskInfo] | list[TaskInfo | AqueueError]:
        """Write many tasks in one round trip (one script call per queue and 500 tasks).

        Every job is validated before anything is written. A job the server refuses
        (duplicate unique task, task id conflict) does not stop the others: with
        ``return_exceptions=True`` its error takes its place in the returned list,
        otherwise the first such error is raised after the others were written.
        """
        now = _now_ms()
        prepared = []
        for i, job in enumerate(jobs):
            if not isinstance(job, Job):
                raise AqueueError(f"enqueue_many takes Job objects, got {job!r} at index {i}")
            prepared.append(self._prepare(job.task, job.payload, job.options, now))
        results = await self._write(prepared, now, durable) if prepared else []
        if not return_exceptions:
            for r in results:
                if isinstance(r, AqueueError):
                    raise r
        return results

    def _prepare(
        self, task: Handler[Any, Any] | str, payload: Any, options: Mapping[str, Any], now: int
    ) -> _Prepared:
        if isinstance(task, Handler):
            task_type, handler_opts = task.name, task.options
        elif isinstance(task, str) and task:
            task_type, handler_opts = task, _NO_OPTIONS
        else:
            raise AqueueError(f"task must be a Handler or a non-empty type name, got {task!r}")
        if options:
            check_options(options, "enqueue")
            opts = resolve(options, handler_opts, self._defaults, now)
        else:
            opts = self._resolved(handler_opts, now)
        data = encode_payload(payload, self._max_payload)
        if isinstance(task, Handler):
            _check_payload(task, payload, data)
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
        message = encode_message(opts.max_retry, digest, body)
        args = [opts.task_id, message, opts.due]
        if digest:
            args += [digest, int(opts.unique * 1000)]
        return _Prepared(task_type, data, opts, args, now)

    def _resolved(self, handler_opts: Mapping[str, Any], now: int) -> Resolved:
        """The options of a task enqueued without options of its own: the handler's and
        the Client's defaults, merged once per handler instead of once per task (only
        the task id differs), unless they schedule relative to now."""
        cached = self._templates.get(id(handler_opts))
        if cached is None or cached[0] is not handler_opts:
            template = resolve({}, handler_opts, self._defaults, now)
            timed = any(
                layer.get(name) is not None
                for layer in (handler_opts, self._defaults)
                for name in ("process_in", "process_at")
            )
            if timed:
                return template
            cached = self._templates[id(handler_opts)] = (handler_opts, template)
        t = cached[1]
        return Resolved(
            t.queue, t.max_retry, t.timeout, t.deadline, 0, t.unique, new_task_id(),
            t.retention, t.headers,
        )  # fmt: skip

    async def _write(self, prepared: list[_Prepared], now: int, durable: bool | None) -> list[Any]:
        if len(prepared) == 1 and not (self.durable if durable is None else durable):
            return [await self._write_one(prepared[0], now)]
        prefix = self._broker.prefix
        by_queue: dict[str, list[int]] = {}
        for i, p in enumerate(prepared):
            by_queue.setdefault(p.opts.queue, []).append(i)
        calls: list[Call] = []
        order: list[list[int]] = []
        for queue, idxs in by_queue.items():
            k = queue_keys(prefix, queue)
            for start in range(0, len(idxs), _BATCH):
                chunk = idxs[start : start + _BATCH]
                unique = any(len(prepared[i].args) == 5 for i in chunk)
                args: list[Any] = [now, 5 if unique else 3]
                for i in chunk:
                    args.extend(prepared[i].args)
                    if unique and len(prepared[i].args) == 3:
                        args += ["", 0]
                calls.append((SCRIPTS.enqueue, enqueue_keys(k, unique=unique), args))
                order.append(chunk)
        earliest: dict[str, int] = {}
        for p in prepared:
            if p.opts.due and p.opts.due < earliest.get(p.opts.queue, p.opts.due + 1):
                earliest[p.opts.queue] = p.opts.due
        extra, new = self._extra(by_queue, earliest)
        if self.durable if durable is None else durable:
            replies = await self._broker.run(lambda: self._write_durably(calls, extra))
        else:
            replies = await self._broker.run(lambda: self._broker.scripts(calls, extra))
        self._known_queues.update(dict.fromkeys(new, time.monotonic()))
        out: list[Any] = [None] * len(prepared)
        for chunk, reply in zip(order, replies, strict=False):
            for i, rep in zip(chunk, reply, strict=True):
                out[i] = _info_or_error(prepared[i], rep)
        return out

    async def _write_one(self, p: _Prepared, now: int) -> TaskInfo | AqueueError:
        """One task, not durable: the most common call. The same script and notices as
        ``_write`` sends for a batch, with less bookkeeping on the way."""
        queue, due = p.opts.queue, p.opts.due
        unique = len(p.args) == 5
        keys = enqueue_keys(queue_keys(self._broker.prefix, queue), unique=unique)
        call: Call = (SCRIPTS.enqueue, keys, [now, 5 if unique else 3, *p.args])
        extra, new = self._extra((queue,), {queue: due} if due else {})
        replies = await self._broker.run(lambda: self._broker.scripts([call], extra))
        self._known_queues.update(dict.fromkeys(new, time.monotonic()))
        return _info_or_error(p, replies[0][0])

    def _extra(
        self, queues: Iterable[str], earliest: Mapping[str, int]
    ) -> tuple[list[tuple[Any, ...]], list[str]]:
        """The commands that go with an enqueue, and the queues they register.

        Queue names are registered on first use and again every so often, so a queue
        deleted and used again by a long-lived client is listed again. The workers hear
        of the earliest delayed task of each queue in the same round trip, so a
        forwarder asleep until later wakes in time for it.
        """
        prefix = self._broker.prefix
        stale = time.monotonic() - _REGISTER_EVERY
        new = [q for q in queues if self._known_queues.get(q, stale) <= stale]
        extra: list[tuple[Any, ...]] = [("SADD", queues_key(prefix), *new)] if new else []
        for queue, due in earliest.items():
            extra.append(("PUBLISH", schedule_channel(prefix), f"{queue}|{due}"))
        return extra, new

    async def _write_durably(self, calls: list[Call], extra: list[Any]) -> list[Any]:
        """Write, then wait until the server's AOF has it. WAITAOF covers the writes of
        its own connection only, so both go through one dedicated connection."""
        b = self._broker
        if b.cluster:
            return await self._write_durably_on_cluster(calls, extra)
        async with b.redis.client() as conn:
            replies = await b.scripts(calls, extra, conn)
            await self._confirm_aof(conn, redacted(b.url))
        return replies

    async def _write_durably_on_cluster(self, calls: list[Call], extra: list[Any]) -> list[Any]:
        """On a cluster each master has its own AOF. The calls for each master touched
        (all keys of a call share one slot) go through one connection to it, then
        WAITAOF there; the masters are written to concurrently. The other extra
        commands are writes of the queue registry, confirmed the same way on its own
        master; the notices (PUBLISH, never persisted) go last, after every write they
        announce."""
        b = self._broker
        groups: dict[str, tuple[str, list[int], list[Any]]] = {}  # node -> key there, calls, extra
        for i, (_, keys, _) in enumerate(calls):
            groups.setdefault(await b.node_of(keys[0]), (keys[0], [], []))[1].append(i)
        notices = [cmd for cmd in extra if cmd[0] == "PUBLISH"]
        writes = [cmd for cmd in extra if cmd[0] != "PUBLISH"]
        if writes:
            registry = queues_key(b.prefix)
            groups.setdefault(await b.node_of(registry), (registry, [], []))[2].extend(writes)
        replies: list[Any] = [None] * len(calls)
        failed: list[Exception] = []

        async def write(node: str, key: str, idxs: list[int], commands: list[Any]) -> None:
            try:
                async with b.node_connection(key) as conn:
                    out = await b.scripts([calls[i] for i in idxs], commands, conn)
                    await self._confirm_aof(conn, f"{redacted(b.url)} (node {node})")
            except Exception as exc:  # raised below as it is, not in an ExceptionGroup
                failed.append(exc)
                return
            for i, reply in zip(idxs, out, strict=False):
                replies[i] = reply

        async with anyio.create_task_group() as tg:
            for node, (key, idxs, commands) in groups.items():
                tg.start_soon(write, node, key, idxs, commands)
        if failed:
            raise failed[0]
        if notices:
            await b.scripts([], notices)
        return replies

    async def _confirm_aof(self, conn: aioredis.Redis, where: str) -> None:
        """Wait until the AOF of ``conn``'s server has that connection's writes."""
        wait_ms = max(1, int(self._broker.timeout * 1000) - 100)
        try:
            local, _ = await conn.execute_command("WAITAOF", 1, 0, wait_ms)  # type: ignore[no-untyped-call]
        except rexc.ResponseError as exc:
            text = str(exc)
            why = (
                "the server has appendonly off"
                if "appendonly" in text
                else "the server does not support WAITAOF (Redis or Valkey 7.2+ needed)"
                if "unknown command" in text.lower()
                else text
            )
            raise AqueueError(
                f"durable enqueue not confirmed: {why} ({where}); the task was written "
                "but may not survive a server crash"
            ) from exc
        if int(local) < 1:
            raise AqueueError(
                f"durable enqueue not confirmed: the server at {where} did not fsync its "
                f"append-only file within {wait_ms} ms; the task was written but may not "
                "survive a server crash"
            )

    async def result(
        self,
        info_or_id: TaskInfo | str,
        *,
        queue: str = "default",
        timeout: float | None = None,
        on_progress: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Wait for a task's final state and return its handler's return value.

        Raises ``TaskFailed`` (with the last error) if the task ended archived,
        ``ResultTimeout`` after ``timeout`` seconds (``None`` waits without limit),
        ``AqueueError`` if the task keeps no result (``retention`` 0), and
        ``BrokerUnavailable`` if the server is lost while waiting. Waits on pub/sub,
        not by polling; ``on_progress`` is called with each ``ctx.progress`` value.
        """
        if isinstance(info_or_id, TaskInfo):
            task_id, queue = info_or_id.id, info_or_id.queue
        else:
            task_id = info_or_id
        check_queue_name(queue)
        # A scope of our own, not fail_after: a TimeoutError raised inside (by
        # on_progress, say) is not ours to turn into ResultTimeout.
        with anyio.move_on_after(timeout):
            return await self._wait_for(task_id, queue, on_progress)
        raise ResultTimeout(
            f"task {task_id!r} in queue {queue!r} did not finish within {timeout:g} s"
        )

    async def _wait_for(
        self, task_id: str, queue: str, on_progress: Callable[[Any], Any] | None
    ) -> Any:
        """Read the task each time a notice names it, until it is final."""
        b = self._broker
        pubsub = b.redis.pubsub(ignore_subscribe_messages=True)
        try:
            # Subscribe first, then read: a notice sent in between is not missed.
            await b.run(functools.partial(pubsub.subscribe, done_channel(b.prefix, queue)))
            last_progress: Any = None
            while True:
                task = await get_task(b, queue, task_id)
                if task.state in (State.COMPLETED, State.ARCHIVED) or task.retention <= 0:
                    return _final(task)
                if on_progress is not None and task.progress != last_progress:
                    last_progress = task.progress
                    outcome = on_progress(task.progress)
                    if inspect.isawaitable(outcome):
                        await outcome
                await self._notice(pubsub, task_id.encode())
        finally:
            with anyio.CancelScope(shield=True):
                await _close_quietly(pubsub)

    async def _notice(self, pubsub: PubSub, mine: bytes) -> None:
        """Return when a notice names the task ``mine``, or after ``_RESULT_RECHECK``
        seconds without one (a notice may be lost while redis-py reconnects the
        subscription after a server restart).

        Each read goes through ``Broker.run``, as every other call: a subscription
        whose server is gone (redis-py's reconnect is refused) raises
        ``BrokerUnavailable``, and one that hangs ends after the wait plus the
        Client's timeout.
        """
        b = self._broker
        read = functools.partial(pubsub.get_message, timeout=_RESULT_RECHECK)
        while True:
            message = await b.run(read, timeout=_RESULT_RECHECK + b.timeout)
            if message is None:
                return
            ids = bytes(message["data"]).partition(b"|")[2]
            if mine in ids.split(b","):
                return

    async def cancel(self, queue: str, task_id: str) -> None:
        """Cancel a task, as ``Inspector.cancel`` does."""
        await cancel_task(self._broker, queue, task_id)


def enqueue_keys(k: QueueKeys, *, unique: bool = False, cron: bool = False) -> tuple[str, ...]:
    """The keys enqueue.lua touches: locks and cron bookkeeping only when used."""
    keys: tuple[str, ...] = (k.pending, k.scheduled, k.tasks, k.states)
    if unique or cron:
        keys += (k.uniq, k.uniq_exp)
    if cron:
        keys += (k.cron, k.cronlog)
    return keys


def _final(task: TaskInfo) -> Any:
    """What ``Client.result`` answers for a task that is final or keeps no result."""
    if task.state == State.COMPLETED:
        return task.result
    if task.state == State.ARCHIVED:
        raise TaskFailed(
            f"task {task.id!r} in queue {task.queue!r} ended archived: {task.last_error}",
            last_error=task.last_error,
        )
    raise AqueueError(
        f"task {task.id!r} keeps no result (retention 0): enqueue it with retention > 0 "
        "to wait for its result"
    )


async def _close_quietly(pubsub: PubSub) -> None:
    """Close a subscription. Its server may be gone: that is why the caller is leaving
    (with ``BrokerUnavailable``), and a second error from the goodbye would hide it."""
    with contextlib.suppress(rexc.RedisError, OSError):
        await pubsub.aclose()


def _check_payload(handler: Handler[Any, Any], payload: Any, data: bytes) -> None:
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


def _info_or_error(p: _Prepared, reply: Any) -> TaskInfo | AqueueError:
    o = p.opts
    if isinstance(reply, list):
        kind, other = reply[0].decode(), reply[1].decode()
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
        state=State.SCHEDULED.value if o.due else State.PENDING.value,
        max_retry=o.max_retry,
        timeout=o.timeout or None,
        deadline=from_ms(o.deadline),
        next_process_at=from_ms(o.due),
        enqueued_at=from_ms(p.now),
        retention=o.retention,
        headers=o.headers or {},
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
