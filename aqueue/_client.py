"""The producer side: ``Client``. It sends the tasks ``_producer`` prepares (one
round trip for one task or a batch; durably, through WAITAOF, when asked), waits for
results on the done channel (``result``), and cancels (``_cancel``)."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar, overload

import anyio
import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.client import PubSub

from . import _flowreads, _flows
from ._cancel import cancel_task
from ._flow import Element, FlowInfo
from ._job import Job as Job  # re-exported: Job was defined here before
from ._mux import Handler
from ._options import check_options
from ._producer import DEFAULT_MAX_PAYLOAD, Prepared, Producer, now_ms, outcome
from ._reads import get_task
from ._redis.batcher import Batcher
from ._redis.broker import DEFAULT_PREFIX, DEFAULT_URL, Broker, Connected, ServerLike, redacted
from ._redis.keys import FlowKeys, done_channel, done_ids, flow_channel, queues_key
from ._redis.scripts import Call
from ._task import State, TaskInfo, check_queue_name
from .errors import (
    AqueueError,
    InvalidOption,
    ResultTimeout,
    TaskFailed,
    TaskNotFound,
    UnsupportedServer,
)

P = TypeVar("P")

# Client.result re-reads the task this often (s) if no notice arrives.
_RESULT_RECHECK = 5.0


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
            raise InvalidOption(
                f"max_payload_bytes must be a positive int, got {max_payload_bytes!r}"
            )
        defaults = dict(defaults or {})
        check_options(defaults, "Client defaults")
        if "task_id" in defaults:
            raise InvalidOption("task_id cannot be a Client default")
        self._broker = Broker(url_or_redis, timeout=timeout, prefix=prefix)
        self._producer = Producer(prefix, defaults=defaults, max_payload=max_payload_bytes)
        self.durable = durable
        # Concurrent enqueue calls (a web app's handlers) of one event-loop turn are
        # written together, as enqueue_many writes: the first goes out at once.
        self._enqueues = Batcher[Prepared, TaskInfo | AqueueError](
            self._write_one, self._write_together
        )

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
        now = now_ms()
        prepared = self._producer.prepare(task, payload, options, now)
        if durable or (durable is None and self.durable):
            result = (await self._write([prepared], now, True))[0]
        else:
            result = await self._enqueues.call(prepared)
        if isinstance(result, TaskInfo):
            return result
        raise result

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
        now = now_ms()
        prepare = self._producer.prepare
        prepared = []
        for i, job in enumerate(jobs):
            if not isinstance(job, Job):
                raise InvalidOption(f"enqueue_many takes Job objects, got {job!r} at index {i}")
            prepared.append(prepare(job.task, job.payload, job.options, now))
        results = await self._write(prepared, now, durable) if prepared else []
        if not return_exceptions:
            for r in results:
                if isinstance(r, AqueueError):
                    raise r
        return results

    async def _write(self, prepared: list[Prepared], now: int, durable: bool | None) -> list[Any]:
        durable = self.durable if durable is None else durable
        if len(prepared) == 1 and not durable:
            return [await self._write_one(prepared[0])]
        batch = self._producer.many(prepared, now)
        calls, extra, b = batch.calls, batch.extra, self._broker
        if durable:
            replies = await b.run(lambda: self._write_durably(calls, extra))
        else:
            replies = await b.run(lambda: b.scripts(calls, extra, at_once=True))
        self._producer.registered(batch.new)
        out: list[Any] = [None] * len(prepared)
        for chunk, reply in zip(batch.order, replies, strict=False):
            for i, rep in zip(chunk, reply, strict=True):
                out[i] = outcome(prepared[i], rep)
        return out

    async def _write_together(self, prepared: list[Prepared]) -> list[TaskInfo | AqueueError]:
        """Concurrent enqueue calls, written as one ``enqueue_many``."""
        return await self._write(prepared, now_ms(), False)

    async def close(self) -> None:
        await self._enqueues.close()
        await super().close()

    async def _write_one(self, p: Prepared) -> TaskInfo | AqueueError:
        """One task, not durable: the most common call. The same script and commands as
        ``_write`` sends for a batch, with less bookkeeping on the way."""
        call, extra, new = self._producer.one(p)
        b = self._broker
        replies = await b.run(lambda: b.scripts([call], extra, at_once=True))
        if new:
            self._producer.registered(new)
        return outcome(p, replies[0][0])

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
            error: type[AqueueError] = UnsupportedServer
            if "appendonly" in text:
                why = "the server has appendonly off"
            elif "unknown command" in text.lower():
                why = "the server does not support WAITAOF (Redis or Valkey 7.2+ needed)"
            else:
                error, why = AqueueError, text
            raise error(
                f"durable enqueue not confirmed: {why} ({where}); the task was written "
                "but may not survive a server crash"
            ) from exc
        if int(local) < 1:
            raise AqueueError(
                f"durable enqueue not confirmed: the server at {where} did not fsync its "
                f"append-only file within {wait_ms} ms; the task was written but may not "
                "survive a server crash"
            )

    async def enqueue_flow(
        self,
        flow: Element,
        *,
        flow_id: str | None = None,
        retention: float = _flows.DEFAULT_RETENTION,
    ) -> FlowInfo:
        """Write a workflow (``aqueue.chain``, ``aqueue.group``, ``aqueue.Flow`` or one
        ``Job``) and start its first steps; every step is checked before anything is
        written. Step results are kept until the flow ends plus ``retention`` seconds.
        See docs/workflows.md."""
        return await _flows.write_flow(
            self._broker, self._producer, flow, flow_id=flow_id, retention=retention
        )

    async def flow(self, flow_id: str) -> FlowInfo:
        """A workflow as stored now; ``TaskNotFound`` when unknown or past its retention."""
        return await _flowreads.read_flow(self._broker, flow_id)

    async def result(
        self,
        info_or_id: TaskInfo | FlowInfo | str,
        *,
        queue: str = "default",
        timeout: float | None = None,
        on_progress: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Wait for a task's final state and return its handler's return value.

        Raises ``TaskFailed`` (with the last error) if the task ended archived,
        ``ResultTimeout`` after ``timeout`` seconds (``None`` waits without limit),
        ``InvalidOption`` if the task keeps no result (``retention`` 0), and
        ``BrokerUnavailable`` if the server is lost while waiting. Waits on pub/sub,
        not by polling; ``on_progress`` is called with each ``ctx.progress`` value.
        """
        if isinstance(info_or_id, FlowInfo) or (
            isinstance(info_or_id, str) and await self._is_flow(info_or_id)
        ):
            flow_id = info_or_id.id if isinstance(info_or_id, FlowInfo) else info_or_id
            with anyio.move_on_after(timeout):
                return await self._wait_for_flow(flow_id)
            raise ResultTimeout(f"flow {flow_id!r} did not finish within {timeout:g} s")
        if isinstance(info_or_id, TaskInfo):
            task_id, queue = info_or_id.id, info_or_id.queue
        else:
            task_id = info_or_id
        check_queue_name(queue)
        # A scope of our own, not fail_after: a TimeoutError raised inside (by
        # on_progress, say) is not ours to turn into ResultTimeout.
        with anyio.move_on_after(timeout):
            try:
                return await self._wait_for(task_id, queue, on_progress)
            except TaskNotFound as exc:
                if isinstance(info_or_id, TaskInfo):
                    raise
                # A bare id is looked up in ``queue``: the likely mistake is a task of
                # another queue and the default "default".
                raise TaskNotFound(
                    f"{exc} (pass queue=... for a task of another queue, or the TaskInfo "
                    f"that enqueue returned)"
                ) from None
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
                    reported = on_progress(task.progress)
                    if inspect.isawaitable(reported):
                        await reported
                await self._notice(pubsub, task_id.encode())
        finally:
            with anyio.CancelScope(shield=True):
                await _close_quietly(pubsub)

    async def _is_flow(self, flow_id: str) -> bool:
        """Whether a flow has this id (a string given to ``result`` is tried as a flow's
        id first)."""
        if not _flows.valid_flow_id(flow_id):
            return False
        b = self._broker
        key = FlowKeys(b.prefix, flow_id).meta
        return bool(await b.run(lambda: b.redis.exists(key)))

    async def _wait_for_flow(self, flow_id: str) -> Any:
        """Read the flow each time its end channel speaks, until it ended."""
        b = self._broker
        pubsub = b.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await b.run(functools.partial(pubsub.subscribe, flow_channel(b.prefix, flow_id)))
            read = functools.partial(pubsub.get_message, timeout=_RESULT_RECHECK)
            while True:
                state, value, error = await _flowreads.flow_output(b, flow_id)
                if state == "completed":
                    return value
                if state in ("failed", "cancelled"):
                    raise TaskFailed(f"flow {flow_id!r} {state}: {error}", last_error=error)
                await b.run(read, timeout=_RESULT_RECHECK + b.timeout)
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
            if mine in done_ids(bytes(message["data"])):
                return

    async def cancel(self, queue: str, task_id: str) -> None:
        """Cancel a task, as ``Inspector.cancel`` does."""
        await cancel_task(self._broker, queue, task_id)


def _final(task: TaskInfo) -> Any:
    """What ``Client.result`` answers for a task that is final or keeps no result."""
    if task.state == State.COMPLETED:
        return task.result
    if task.state == State.ARCHIVED:
        raise TaskFailed(
            f"task {task.id!r} in queue {task.queue!r} ended archived: {task.last_error}",
            last_error=task.last_error,
        )
    raise InvalidOption(
        f"task {task.id!r} keeps no result (retention 0): enqueue it with retention > 0 "
        "to wait for its result"
    )


async def _close_quietly(pubsub: PubSub) -> None:
    """Close a subscription. Its server may be gone: that is why the caller is leaving
    (with ``BrokerUnavailable``), and a second error from the goodbye would hide it."""
    with contextlib.suppress(rexc.RedisError, OSError):
        await pubsub.aclose()
