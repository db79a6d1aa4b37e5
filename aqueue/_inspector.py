"""Reading and repairing queues: ``Inspector``.

Reads are pipelined plain commands: a consistent-enough snapshot for an operator, in
one or two round trips, never a scan of a whole queue. Every change is a Lua script
that touches one queue (see ``_scripts/``), so no task is ever seen half moved. Bulk
changes (``run_all``, ``archive_all``, ``delete_all``) run their script on at most
``BULK_BATCH`` tasks per call, so a queue of a million tasks never holds the server for
more than a few milliseconds at a time; other clients are served between batches.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.exceptions as rexc

from ._codec import decode_message, decode_value
from ._cron import CronEntry
from ._redis.broker import (
    DEFAULT_PREFIX,
    DEFAULT_URL,
    SCRIPTS,
    Broker,
    Call,
    Connected,
    Script,
    ServerLike,
)
from ._redis.keys import (
    QueueKeys,
    cancel_channel,
    done_channel,
    queue_keys,
    queues_key,
    worker_key,
    workers_key,
)
from ._task import DailyStats, QueueInfo, State, TaskInfo, WorkerInfo, check_queue_name, from_ms
from .errors import AqueueError, QueueNotEmpty, QueueNotFound, TaskNotFound

# Tasks moved per script call by the bulk operations.
BULK_BATCH = 1000
# Days of per-day counters kept in a queue's stats hash.
HISTORY_DAYS = 90

_RUN_NOW = Script("run_now")
_ARCHIVE = Script("archive")
_DELETE = Script("delete")
_DROP_QUEUE = Script("drop_queue")
_TRIM_STATS = Script("trim_stats")

_STATES = tuple(s.value for s in State)
_RUNNABLE = ("scheduled", "retry", "archived")
_ARCHIVABLE = ("pending", "scheduled", "retry")
_DELETABLE = ("pending", "scheduled", "retry", "archived", "completed")
# Per task, get_task reads these hash fields, then these sorted-set scores.
_TASK_HASHES = ("states", "tasks", "retried", "errors", "failed_at", "results", "progress")
_TASK_SETS = ("scheduled", "retry", "completed")


async def cancel_task(broker: Broker, queue: str, task_id: str) -> str:
    """Cancel one task; return the state it was in. See cancel.lua."""
    check_queue_name(queue)
    k = queue_keys(broker.prefix, queue)
    keys = (
        k.states, k.pending, k.scheduled, k.retry, k.archived, k.errors, k.failed_at,
        k.uniq, k.uniq_exp, k.tasks, k.cancels,
    )  # fmt: skip
    now = int(time.time() * 1000)
    state = await broker.run(lambda: broker.script(SCRIPTS.cancel, keys, [now, task_id]))
    if state is None:
        raise TaskNotFound(f"no task {task_id!r} in queue {queue!r}")
    text = _text(state)
    if text == "active":
        # Wake the worker now; if it misses this, it finds the request at its next
        # heartbeat, or the reaper archives the task if the worker is gone.
        message = f"{queue}|{task_id}"
        await broker.run(lambda: broker.redis.publish(cancel_channel(broker.prefix), message))
    elif text in _ARCHIVABLE:
        # Archived now: wake anyone waiting for its result.
        await _notify(broker, queue, "archived", [task_id])
    return text


async def get_task(broker: Broker, queue: str, task_id: str) -> TaskInfo:
    """One task as stored now; ``TaskNotFound`` if there is no such task. A function of
    the Broker, so that ``Client.result`` reads through the Client's own Broker (its
    errors name the Client's URL, its calls share the Client's watchdog)."""
    check_queue_name(queue)
    (task,) = await read_tasks(broker, [(queue, task_id)])
    if task is None:
        raise TaskNotFound(f"no task {task_id!r} in queue {queue!r}")
    return task


async def read_tasks(broker: Broker, refs: Sequence[tuple[str, str]]) -> list[TaskInfo | None]:
    """Read many (queue, id) tasks in one round trip; ``None`` for a missing one."""
    if not refs:
        return []

    async def read() -> list[Any]:
        pipe = broker.redis.pipeline(transaction=False)
        for queue, task_id in refs:
            k = queue_keys(broker.prefix, queue)
            for h in _TASK_HASHES:
                pipe.hget(getattr(k, h), task_id)
            for z in _TASK_SETS:
                pipe.zscore(getattr(k, z), task_id)
        return list(await pipe.execute())

    replies = await broker.run(read)
    n = len(_TASK_HASHES) + len(_TASK_SETS)
    return [
        _task_info(queue, task_id, replies[i * n : (i + 1) * n])
        for i, (queue, task_id) in enumerate(refs)
    ]


class Inspector(Connected):
    """Looks into queues and repairs them. Connects lazily; usable without ``async with``.

    Queue-level calls on a queue the server has never heard of raise ``QueueNotFound``
    (``pause`` and ``resume`` excepted: they accept a queue with no tasks yet); per-task
    calls raise ``TaskNotFound`` for an unknown id.
    """

    def __init__(
        self,
        url_or_redis: ServerLike = DEFAULT_URL,
        *,
        timeout: float = 5.0,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self._broker = Broker(url_or_redis, timeout=timeout, prefix=prefix)

    async def queues(self) -> list[str]:
        """Names of every queue a client or worker has used, sorted."""
        b = self._broker
        names = await b.run(lambda: b.redis.smembers(queues_key(b.prefix)))
        return sorted(_text(n) for n in names)

    async def queue_info(self, queue: str) -> QueueInfo:
        """Sizes per state, pause, today's and total counters, latency and memory."""
        check_queue_name(queue)
        b = self._broker
        k = queue_keys(b.prefix, queue)
        day = _day(0)
        extra: list[tuple[Any, ...]] = [
            *self._known_commands(queue),
            ("LLEN", k.pending),
            ("ZCARD", k.scheduled),
            ("ZCARD", k.retry),
            ("ZCARD", k.archived),
            ("ZCARD", k.completed),
            ("EXISTS", k.paused),
            ("HMGET", k.stats, "p", "f", f"p:{day}", f"f:{day}"),
            ("LINDEX", k.pending, -1),  # the next to run: the one waiting longest
            ("ZRANGE", k.leases, 0, -1),
        ]
        replies = await self._read_and_trim(k, extra)
        await self._check_known(queue, replies[:2])
        pending, scheduled, retry, archived, completed, paused = (int(x) for x in replies[2:8])
        p, f, p_today, f_today = (int(x or 0) for x in replies[8])
        oldest, workers = replies[9], [_text(w) for w in replies[10]]
        active, latency, memory = await self._estimates(k, oldest, [k.lease(w) for w in workers])
        return QueueInfo(
            queue=queue,
            pending=pending,
            active=active,
            scheduled=scheduled,
            retry=retry,
            archived=archived,
            completed=completed,
            paused=bool(paused),
            processed=p_today,
            failed=f_today,
            processed_total=p,
            failed_total=f,
            latency=latency,
            memory_bytes=memory,
        )

    async def history(self, queue: str, days: int = 7) -> list[DailyStats]:
        """Processed and failed attempts per UTC day, today first, ``days`` entries.
        Counters are kept for ``HISTORY_DAYS`` days; older days read as zero."""
        check_queue_name(queue)
        if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 3650:
            raise AqueueError(f"days must be an int from 1 to 3650, got {days!r}")
        b = self._broker
        k = queue_keys(b.prefix, queue)
        dates = [_day(i) for i in range(days)]
        fields = [f"{kind}:{d}" for d in dates for kind in ("p", "f")]
        extra = [*self._known_commands(queue), ("HMGET", k.stats, *fields)]
        replies = await self._read_and_trim(k, extra)
        await self._check_known(queue, replies[:2])
        counts = [int(x or 0) for x in replies[2]]
        return [
            DailyStats(date=d, processed=counts[2 * i], failed=counts[2 * i + 1])
            for i, d in enumerate(dates)
        ]

    async def pause(self, queue: str) -> None:
        """Stop workers from claiming this queue's tasks; running tasks finish. Accepts a
        queue with no tasks yet (it is registered)."""
        check_queue_name(queue)
        b = self._broker
        k = queue_keys(b.prefix, queue)
        now = int(time.time() * 1000)
        # The value is when it was paused, for the record; workers only test existence.
        commands = [("SET", k.paused, now), ("SADD", queues_key(b.prefix), queue)]
        await b.run(lambda: b.scripts([], commands))

    async def resume(self, queue: str) -> None:
        """Let workers claim this queue's tasks again."""
        check_queue_name(queue)
        b = self._broker
        k = queue_keys(b.prefix, queue)
        commands = [("DEL", k.paused), ("SADD", queues_key(b.prefix), queue)]
        await b.run(lambda: b.scripts([], commands))

    async def delete_queue(self, queue: str, force: bool = False) -> None:
        """Remove the queue and every key it has. ``QueueNotEmpty`` if it holds tasks in
        any state, unless ``force``: then they go too, active ones included (their
        workers' late writes are refused). A worker still serving the queue registers
        it again at its next heartbeat."""
        check_queue_name(queue)
        b = self._broker
        k = queue_keys(b.prefix, queue)
        replies = await b.run(
            lambda: b.scripts([], [*self._known_commands(queue), ("ZRANGE", k.leases, 0, -1)])
        )
        await self._check_known(queue, replies[:2])
        leases = [k.lease(_text(w)) for w in replies[2]]
        others = [key for key in _all_keys(k) if key not in (k.states, k.pending)]
        keys = [k.states, k.pending, *others, *leases]
        n = int(await b.run(lambda: b.script(_DROP_QUEUE, keys, ["1" if force else "0"])))
        if n < 0:
            raise QueueNotEmpty(
                f"queue {queue!r} still holds {-n} task(s): delete them first, or pass "
                "force=True to delete the queue with them"
            )
        await b.run(lambda: b.redis.srem(queues_key(b.prefix), queue))

    # -- tasks ---------------------------------------------------------------------------

    async def list_tasks(
        self, queue: str, state: str, page: int = 1, size: int = 50
    ) -> list[TaskInfo]:
        """One page of the queue's tasks in ``state``, 1-based.

        Order: pending in queue order (next to run first); active by worker, longest
        held first; scheduled and retry by due time, soonest first; archived most
        recently archived first; completed by the end of their retention, latest first.
        """
        check_queue_name(queue)
        state = _state(state)
        for name, value in (("page", page), ("size", size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise AqueueError(f"{name} must be an int >= 1, got {value!r}")
        b = self._broker
        k = queue_keys(b.prefix, queue)
        start, stop = (page - 1) * size, page * size - 1
        page_cmd: tuple[Any, ...]
        if state == "pending":
            # The next to run is at the right end: read the page from there, backwards.
            page_cmd = ("LRANGE", k.pending, -stop - 1, -start - 1)
        elif state == "active":
            page_cmd = ("ZRANGE", k.leases, 0, -1)
        elif state in ("scheduled", "retry"):
            page_cmd = ("ZRANGE", getattr(k, state), start, stop)
        else:
            page_cmd = ("ZRANGE", getattr(k, state), start, stop, "REV")
        replies = await b.run(lambda: b.scripts([], [*self._known_commands(queue), page_cmd]))
        await self._check_known(queue, replies[:2])
        ids = [_text(i) for i in replies[2]]
        if state == "pending":
            ids.reverse()
        elif state == "active":
            ids = (await self._active_ids(k, ids))[start : stop + 1]
        tasks = await read_tasks(self._broker, [(queue, i) for i in ids])
        # A task that moved on between the two reads is left out of this page.
        return [t for t in tasks if t is not None and t.state == state]

    async def get_task(self, queue: str, task_id: str) -> TaskInfo:
        """The task as stored now; ``TaskNotFound`` if there is no such task."""
        return await get_task(self._broker, queue, task_id)

    async def run_task(self, queue: str, task_id: str) -> None:
        """Move a scheduled, retry or archived task to pending, to run as soon as a
        worker is free. It keeps its retry count: an archived task whose retries are
        spent gets one more attempt."""
        await self._one(_RUN_NOW, queue, task_id, "run", _RUNNABLE)

    async def archive_task(self, queue: str, task_id: str) -> None:
        """Archive a pending, scheduled or retry task without running it (no error is
        recorded; its unique lock is released). To stop an active task, ``cancel`` it."""
        await self._one(_ARCHIVE, queue, task_id, "archive", _ARCHIVABLE)

    async def delete_task(self, queue: str, task_id: str) -> None:
        """Delete a task that is not active, with its result, error, progress and
        unique lock. To stop an active task, ``cancel`` it first."""
        await self._one(_DELETE, queue, task_id, "delete", _DELETABLE)

    async def cancel(self, queue: str, task_id: str) -> None:
        """Cancel a task: a waiting one is archived without running; a running one has
        its handler cancelled and is archived as cancelled, never retried. A task that
        already completed or was archived is left as it is."""
        await cancel_task(self._broker, queue, task_id)

    async def run_all(self, queue: str, state: str) -> int:
        """Move every scheduled, retry or archived task (per ``state``) to pending;
        return how many moved."""
        return await self._bulk(_RUN_NOW, queue, state, "run", _RUNNABLE)

    async def archive_all(self, queue: str, state: str) -> int:
        """Archive every pending, scheduled or retry task (per ``state``); return how
        many were archived."""
        return await self._bulk(_ARCHIVE, queue, state, "archive", _ARCHIVABLE)

    async def delete_all(self, queue: str, state: str) -> int:
        """Delete every task in ``state`` (any state but active); return how many."""
        return await self._bulk(_DELETE, queue, state, "delete", _DELETABLE)

    # -- workers -------------------------------------------------------------------------

    async def workers(self) -> list[WorkerInfo]:
        """Live workers, each with the tasks it is running now, oldest started first.
        A worker that died without a goodbye is gone once its lease expires."""
        b = self._broker
        now = int(time.time() * 1000)
        ids = [
            _text(i)
            for i in await b.run(
                lambda: b.redis.zrangebyscore(workers_key(b.prefix), f"({now}", "+inf")
            )
        ]
        if not ids:
            return []
        # One GET each in a pipeline, not MGET: on a cluster the cards live on any node.
        read = b.redis.pipeline(transaction=False)
        for i in ids:
            read.get(worker_key(b.prefix, i))
        cards = await b.run(read.execute)
        workers = [w for w in (_worker_info(card) for card in cards) if w is not None]
        leases = [(w, q) for w in workers for q in w.queues]
        pipe = b.redis.pipeline(transaction=False)
        for w, q in leases:
            pipe.lrange(queue_keys(b.prefix, q).lease(w.id), 0, -1)
        held = await b.run(pipe.execute) if leases else []
        # A lease list has the newest claim on the left: read it from the right.
        refs = [(q, _text(i)) for (_, q), ids in zip(leases, held, strict=True) for i in ids[::-1]]
        owners = [w for (w, _), ids in zip(leases, held, strict=True) for _ in ids]
        for w, task in zip(owners, await read_tasks(self._broker, refs), strict=True):
            if task is not None and task.state == "active":
                w.active.append(task)
        return sorted(workers, key=lambda w: (w.started_at, w.id))

    # -- plumbing ------------------------------------------------------------------------

    def _known_commands(self, queue: str) -> list[tuple[Any, ...]]:
        """Two commands whose replies tell whether the server knows ``queue``."""
        k = queue_keys(self._broker.prefix, queue)
        return [
            ("SISMEMBER", queues_key(self._broker.prefix), queue),
            ("EXISTS", k.states, k.stats, k.paused, k.pending),
        ]

    async def _check_known(self, queue: str, replies: Sequence[Any]) -> None:
        if any(int(r) for r in replies):
            return
        known = await self.queues()
        hint = f"known queues: {', '.join(known)}" if known else "the server has no queues"
        raise QueueNotFound(f"no queue {queue!r} ({hint})")

    async def _read_and_trim(self, k: QueueKeys, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Run ``commands`` in one round trip and, on the way, forget day counters older
        than ``HISTORY_DAYS`` (trim_stats.lua), except on a read-only replica."""
        b = self._broker
        trim: Call = (_TRIM_STATS, (k.stats,), [_day(HISTORY_DAYS - 1)])
        try:
            replies = await b.run(lambda: b.scripts([trim], commands))
        except rexc.ReadOnlyError:
            return await b.run(lambda: b.scripts([], commands))
        return replies[1:]

    async def _estimates(
        self, k: QueueKeys, oldest: bytes | None, leases: list[str]
    ) -> tuple[int, float, int]:
        """Active tasks (held in lease lists), latency (age of the ``oldest`` pending
        task) and memory (``MEMORY USAGE`` of every key) of a queue, in one round trip."""
        b = self._broker
        pipe = b.redis.pipeline(transaction=False)
        pipe.hget(k.tasks, oldest or "")
        for lease in leases:
            pipe.llen(lease)
        for key in [*_all_keys(k), *leases]:
            pipe.execute_command("MEMORY", "USAGE", key)
        # MEMORY may be disabled on a managed server: the estimate is then 0, not an error.
        replies = await b.run(lambda: pipe.execute(raise_on_error=False))
        message = replies[0]
        active = sum(int(n) for n in replies[1 : 1 + len(leases)])
        memory = sum(int(n) for n in replies[1 + len(leases) :] if isinstance(n, int))
        latency = 0.0
        if isinstance(message, bytes):
            enqueued_at = decode_message(message)[2].enqueued_at
            latency = max(0.0, time.time() - enqueued_at / 1000)
        return active, latency, memory

    async def _active_ids(self, k: QueueKeys, workers: list[Any]) -> list[str]:
        """Ids held active in the queue's lease lists, by worker, longest held first
        (an id a blocking claim moved but has not marked active yet is left out)."""
        b = self._broker
        if not workers:
            return []
        pipe = b.redis.pipeline(transaction=False)
        for w in workers:
            pipe.lrange(k.lease(_text(w)), 0, -1)
        ids = [_text(i) for held in await b.run(pipe.execute) for i in held[::-1]]
        if not ids:
            return []
        states = await b.run(lambda: b.redis.hmget(k.states, ids))
        return [i for i, s in zip(ids, states, strict=True) if s and _text(s).startswith("@")]

    def _task_args(self, script: Script, queue: str) -> tuple[list[str], list[Any]]:
        """The keys of one of the admin scripts, and the arguments that follow the mode
        and the id or state."""
        k = queue_keys(self._broker.prefix, queue)
        now = int(time.time() * 1000)
        if script is _RUN_NOW:
            return [k.states, k.pending, k.scheduled, k.retry, k.archived], []
        if script is _ARCHIVE:
            keys = [k.states, k.pending, k.scheduled, k.retry, k.archived, k.tasks, k.uniq]
            return [*keys, k.uniq_exp], [now]
        keys = [
            k.states, k.pending, k.scheduled, k.retry, k.archived, k.completed, k.tasks,
            k.retried, k.errors, k.failed_at, k.results, k.progress, k.uniq, k.uniq_exp,
            k.cancels,
        ]  # fmt: skip
        return keys, []

    async def _one(
        self, script: Script, queue: str, task_id: str, verb: str, allowed: tuple[str, ...]
    ) -> None:
        check_queue_name(queue)
        b = self._broker
        keys, rest = self._task_args(script, queue)
        reply = await b.run(lambda: b.script(script, keys, ["one", task_id, *rest]))
        if reply is None:
            raise TaskNotFound(f"no task {task_id!r} in queue {queue!r}")
        before = _text(reply)
        if before.startswith("@"):
            before = "active"
        if before not in allowed:
            hint = ": cancel it instead" if before == "active" and verb != "run" else ""
            raise AqueueError(
                f"cannot {verb} task {task_id!r} in queue {queue!r}: it is {before}; only "
                f"{_either(allowed)} tasks can be {_past(verb)}{hint}"
            )
        if script is not _RUN_NOW:
            await _notify(b, queue, "archived" if script is _ARCHIVE else "deleted", [task_id])

    async def _bulk(
        self, script: Script, queue: str, state: str, verb: str, allowed: tuple[str, ...]
    ) -> int:
        check_queue_name(queue)
        state = _state(state)
        if state not in allowed:
            raise AqueueError(
                f"cannot {verb} all {state} tasks of queue {queue!r}: only {_either(allowed)} "
                f"tasks can be {_past(verb)}"
            )
        b = self._broker
        k = queue_keys(b.prefix, queue)
        size_cmd = ("LLEN", k.pending) if state == "pending" else ("ZCARD", getattr(k, state))
        replies = await b.run(lambda: b.scripts([], [*self._known_commands(queue), size_cmd]))
        await self._check_known(queue, replies[:2])
        # Only what was there when the call began: a source that keeps filling up does
        # not keep the loop going.
        size = int(replies[2])
        keys, rest = self._task_args(script, queue)
        moved = taken = 0
        while taken < size:
            limit = min(BULK_BATCH, size - taken)
            call = functools.partial(b.script, script, keys, ["all", state, *rest, limit])
            reply = await b.run(call)
            moved += int(reply[0])
            taken += int(reply[1])
            if script is not _RUN_NOW and len(reply) > 2:
                kind = "archived" if script is _ARCHIVE else "deleted"
                await _notify(b, queue, kind, [_text(i) for i in reply[2:]])
            if int(reply[1]) < limit:
                break
        return moved

    async def cron_entries(self) -> list[CronEntry]:
        """Every cron schedule any worker runs, once each, with its spec, time zone,
        task, queue, next and last run, and recent history (newest first)."""
        from ._worker.scheduler import read_cron_entries  # the scheduler imports the client

        return await read_cron_entries(self._broker)


def _task_info(queue: str, task_id: str, replies: Sequence[Any]) -> TaskInfo | None:
    state, message, retried, error, failed_at, result, progress, sched, retry, done = replies
    if state is None or message is None:
        return None
    max_retry, _, body = decode_message(message)
    text = _text(state)
    due = sched if text == "scheduled" else retry if text == "retry" else None
    completed_at = None
    if text == "completed" and isinstance(done, float):
        completed_at = from_ms(int(done - body.retention * 1000))
    return TaskInfo(
        id=task_id,
        queue=queue,
        type=body.type,
        payload=decode_value(body.payload),
        state="active" if text.startswith("@") else text,
        max_retry=max_retry,
        retried=int(retried) if retried is not None else 0,
        last_error=_text(error) if error is not None else None,
        last_failed_at=from_ms(int(failed_at)) if failed_at is not None else None,
        timeout=body.timeout or None,
        deadline=from_ms(body.deadline),
        next_process_at=from_ms(int(due)) if isinstance(due, float) else None,
        completed_at=completed_at,
        result=decode_value(result) if isinstance(result, bytes) else None,
        enqueued_at=from_ms(body.enqueued_at),
        retention=body.retention,
        headers=body.headers or {},
        progress=decode_value(progress) if isinstance(progress, bytes) else None,
    )


def _worker_info(card: bytes | str | None) -> WorkerInfo | None:
    """A registry card (see ``_lease.LeaseKeeper._card``) as a ``WorkerInfo``; ``None``
    when it expired between the two reads or cannot be read."""
    if not isinstance(card, bytes):
        return None
    try:
        data = decode_value(card)
        queues = {str(q): float(w) for q, w in data["queues"].items()}
        return WorkerInfo(
            id=str(data["id"]),
            host=str(data["host"]),
            pid=int(data["pid"]),
            queues=queues,
            concurrency=int(data["concurrency"]),
            started_at=from_ms(int(data["started_at"])) or datetime.now(UTC),
        )
    except Exception:  # a card written by another version: skip it, do not fail
        return None


async def _notify(broker: Broker, queue: str, kind: str, ids: list[str]) -> None:
    """Tell ``Client.result`` waiters that these tasks reached a final state or are gone."""
    if ids:
        message = f"{kind}|{','.join(ids)}"
        channel = done_channel(broker.prefix, queue)
        await broker.run(lambda: broker.redis.publish(channel, message))


def _all_keys(k: QueueKeys) -> list[str]:
    """Every fixed key of the queue (lease lists are per worker: not included)."""
    values = (getattr(k, name) for name in QueueKeys.__slots__ if name != "base")
    return [v for v in values if isinstance(v, str) and v.startswith(k.base)]


def _state(state: object) -> str:
    value = state.value if isinstance(state, State) else state
    if not isinstance(value, str) or value not in _STATES:
        raise AqueueError(f"unknown task state {state!r}: use one of {', '.join(_STATES)}")
    return value


def _day(days_ago: int) -> str:
    return (datetime.now(UTC).date() - timedelta(days=days_ago)).isoformat()


def _either(states: tuple[str, ...]) -> str:
    return ", ".join(states[:-1]) + " or " + states[-1]


def _past(verb: str) -> str:
    return {"run": "run", "archive": "archived", "delete": "deleted"}[verb]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
