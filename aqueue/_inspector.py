"""Reading and repairing queues: ``Inspector``.

Tasks, workers and cron entries are read by ``_reads`` (which ``Client.result`` shares)
and a task is cancelled by ``_cancel`` (which ``Client.cancel`` shares); the rest is
here. Reads are pipelined plain commands: a consistent-enough snapshot for an operator, in
one or two round trips, never a scan of a whole queue. Every change is a Lua script
that touches one queue (see ``_redis/scripts``), so no task is ever seen half moved. Bulk
changes (``run_all``, ``archive_all``, ``delete_all``) run their script on at most
``BULK_BATCH`` tasks per call, so a queue of a million tasks never holds the server for
more than a few milliseconds at a time; other clients are served between batches.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.exceptions as rexc

from . import _flowreads, _flows
from ._cancel import cancel_task, publish_done
from ._codec import decode_message
from ._cron import CronEntry
from ._flow import FlowInfo
from ._format import either
from ._limits import LimitInfo
from ._minutes import minutes_key
from ._reads import (
    get_task,
    read_cron_entries,
    read_limits,
    read_queues,
    read_tasks,
    read_workers,
    text,
    unknown_types_key,
)
from ._redis import scripts
from ._redis.broker import DEFAULT_PREFIX, DEFAULT_URL, Broker, Connected, ServerLike
from ._redis.keys import Done, QueueKeys, lane_member_id, queue_keys, queues_key
from ._redis.scripts import Call, Mode
from ._task import (
    ACTION_STATES,
    Action,
    DailyStats,
    QueueInfo,
    State,
    TaskInfo,
    WorkerInfo,
    check_queue_name,
)
from .errors import InvalidOption, QueueNotEmpty, QueueNotFound, StateRefused, TaskNotFound

# Tasks moved per script call by the bulk operations.
BULK_BATCH = 1000
# Days of per-day counters kept in a queue's stats hash.
HISTORY_DAYS = 90

_STATES = tuple(s.value for s in State)
_RUNNABLE = ACTION_STATES[Action.RUN]
_ARCHIVABLE = ACTION_STATES[Action.ARCHIVE]
_DELETABLE = ACTION_STATES[Action.DELETE]
# What the done notice of a task an operator moved says (run_now moves none to an end).
_ENDED = {"archive": Done.ARCHIVED, "delete": Done.DELETED}
_PAST = {"run": "run", "archive": "archived", "delete": "deleted"}


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
        return await read_queues(self._broker)

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
            # Flow control's lanes (docs/flow-control.md): their count, and the first
            # lane's oldest task when the plain list is empty.
            ("ZCARD", k.ready),
            ("ZRANGE", k.ready, 0, 0),
        ]
        replies = await self._read_and_trim(k, extra)
        await self._check_known(queue, replies[:2])
        pending, scheduled, retry, archived, completed, paused = (int(x) for x in replies[2:8])
        p, f, p_today, f_today = (int(x or 0) for x in replies[8])
        oldest, workers = replies[9], [text(w) for w in replies[10]]
        pending += int(replies[11])
        if oldest is None and replies[12]:
            oldest = lane_member_id(replies[12][0])
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
            raise InvalidOption(f"days must be an int from 1 to 3650, got {days!r}")
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
        # Ring the queue's bell (one token at most): its workers found it dry while it
        # was paused and wait for a bell before they claim from it again.
        commands = [
            ("DEL", k.paused), ("SADD", queues_key(b.prefix), queue),
            ("LPUSH", k.bell, "1"), ("LTRIM", k.bell, 0, 0),
        ]  # fmt: skip
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
        call = scripts.drop_queue(k, [k.lease(text(w)) for w in replies[2]], force)
        n = scripts.parse_drop_queue(await b.run(lambda: b.script(call)))
        if n:
            raise QueueNotEmpty(
                f"queue {queue!r} still holds {n} task(s): delete them first, or pass "
                "force=True to delete the queue with them",
                queue=queue,
                count=n,
            )
        # With the notes kept beside the queue's keys, for stats and the dashboard.
        forget = [
            ("SREM", queues_key(b.prefix), queue),
            ("DEL", unknown_types_key(b.prefix, queue)),
            ("DEL", minutes_key(b.prefix, queue)),
        ]
        await b.run(lambda: b.scripts([], forget))

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
                raise InvalidOption(f"{name} must be an int >= 1, got {value!r}")
        b = self._broker
        k = queue_keys(b.prefix, queue)
        start, stop = (page - 1) * size, page * size - 1
        page_cmd: tuple[Any, ...]
        lanes: list[tuple[Any, ...]] = []
        if state == "pending":
            # The next to run is at the right end: read the page from there, backwards;
            # then the tasks waiting in flow control's lanes, lane by lane.
            page_cmd = ("LRANGE", k.pending, -stop - 1, -start - 1)
            lanes = [("LLEN", k.pending), ("ZRANGE", k.ready, 0, stop)]
        elif state == "active":
            page_cmd = ("ZRANGE", k.leases, 0, -1)
        elif state in ("scheduled", "retry"):
            page_cmd = ("ZRANGE", getattr(k, state), start, stop)
        else:
            page_cmd = ("ZRANGE", getattr(k, state), start, stop, "REV")
        commands = [*self._known_commands(queue), page_cmd, *lanes]
        replies = await b.run(lambda: b.scripts([], commands))
        await self._check_known(queue, replies[:2])
        ids = [text(i) for i in replies[2]]
        if state == "pending":
            ids.reverse()
            plain = int(replies[3])
            laned = replies[4][max(0, start - plain) : max(0, stop + 1 - plain)]
            ids += [lane_member_id(m) for m in laned][: size - len(ids)]
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
        await self._one(queue, task_id, "run", _RUNNABLE)

    async def archive_task(self, queue: str, task_id: str) -> None:
        """Archive a pending, scheduled or retry task without running it (no error is
        recorded; its unique lock is released). To stop an active task, ``cancel`` it."""
        await self._one(queue, task_id, "archive", _ARCHIVABLE)

    async def delete_task(self, queue: str, task_id: str) -> None:
        """Delete a task that is not active, with its result, error, progress and
        unique lock. To stop an active task, ``cancel`` it first."""
        await self._one(queue, task_id, "delete", _DELETABLE)

    async def cancel(self, queue: str, task_id: str) -> None:
        """Cancel a task: a waiting one is archived without running; a running one has
        its handler cancelled and is archived as cancelled, never retried. A task that
        already completed or was archived is left as it is."""
        await cancel_task(self._broker, queue, task_id)

    async def cancel_flow(self, flow_id: str) -> None:
        """Cancel a workflow: its running steps are cancelled (as ``cancel``), the
        steps not started are archived; completed steps stay completed. ``TaskNotFound``
        for an unknown flow; a flow that ended is left as it is."""
        b = self._broker
        in_queues = await _flowreads.cancel_flow(b, flow_id)
        for queue, task_id in in_queues:
            with contextlib.suppress(TaskNotFound):
                await cancel_task(b, queue, task_id)
        # The ends of steps archived while waiting in their queue: recorded now, not at
        # a worker's next sweep.
        for queue in sorted({q for q, _ in in_queues}):
            await _flows.finish_steps(b, queue)

    async def flows(
        self, state: str | None = None, page: int = 1, size: int = 50
    ) -> list[FlowInfo]:
        """Workflows, newest first (``state``: pending, running, completed, failed or
        cancelled; None for all)."""
        for name, value in (("page", page), ("size", size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidOption(f"{name} must be an int >= 1, got {value!r}")
        if state is not None and state not in _FLOW_STATES:
            raise InvalidOption(
                f"unknown flow state {state!r}: use one of {', '.join(_FLOW_STATES)}"
            )
        return await _flowreads.list_flows(self._broker, state, page, size)

    async def run_all(self, queue: str, state: str) -> int:
        """Move every scheduled, retry or archived task (per ``state``) to pending;
        return how many moved."""
        return await self._bulk(queue, state, "run", _RUNNABLE)

    async def archive_all(self, queue: str, state: str) -> int:
        """Archive every pending, scheduled or retry task (per ``state``); return how
        many were archived."""
        return await self._bulk(queue, state, "archive", _ARCHIVABLE)

    async def delete_all(self, queue: str, state: str) -> int:
        """Delete every task in ``state`` (any state but active); return how many."""
        return await self._bulk(queue, state, "delete", _DELETABLE)

    # -- workers -------------------------------------------------------------------------

    async def workers(self) -> list[WorkerInfo]:
        """Live workers, each with the tasks it is running now, oldest started first.
        A worker that died without a goodbye is gone once its lease expires."""
        return await read_workers(self._broker)

    async def limits(self) -> list[LimitInfo]:
        """Every declared limit (docs/flow-control.md): a queue's own (``task_type``
        None) and each task type's, with the slots taken now (``running``, summed over
        keys) and how many limit keys have pending or active tasks (``keys``)."""
        return await read_limits(self._broker)

    async def cron_entries(self) -> list[CronEntry]:
        """Every cron schedule any worker runs, once each, with its spec, time zone,
        task, queue, next and last run, and recent history (newest first)."""
        return await read_cron_entries(self._broker)

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
        trim = scripts.trim_stats(k, _day(HISTORY_DAYS - 1))
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
        for key in [*k.fixed(), *leases]:
            pipe.execute_command("MEMORY", "USAGE", key)
        # MEMORY may be disabled on a managed server: the estimate is then 0, not an error.
        replies = await b.run(lambda: pipe.execute(raise_on_error=False))
        message = replies[0]
        active = sum(int(n) for n in replies[1 : 1 + len(leases)])
        memory = sum(int(n) for n in replies[1 + len(leases) :] if isinstance(n, int))
        latency = 0.0
        if isinstance(message, bytes):
            enqueued_at = decode_message(message)[1].enqueued_at
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
            pipe.lrange(k.lease(text(w)), 0, -1)
        ids = [text(i) for held in await b.run(pipe.execute) for i in held[::-1]]
        if not ids:
            return []
        states = await b.run(lambda: b.redis.hmget(k.states, ids))
        return [i for i, s in zip(ids, states, strict=True) if s and text(s).startswith("@")]

    def _call(self, verb: str, queue: str, mode: Mode, target: str, limit: int = 0) -> Call:
        """The call of the admin script for ``verb`` (run_now, archive or delete)."""
        k = queue_keys(self._broker.prefix, queue)
        if verb == "run":
            return scripts.run_now(k, mode, target, limit)
        if verb == "archive":
            return scripts.archive(k, mode, target, int(time.time() * 1000), limit)
        return scripts.delete(k, mode, target, limit)

    async def _one(self, queue: str, task_id: str, verb: str, allowed: tuple[str, ...]) -> None:
        check_queue_name(queue)
        b = self._broker
        call = self._call(verb, queue, "one", task_id)
        before = scripts.parse_state(await b.run(lambda: b.script(call)))
        if before is None:
            raise TaskNotFound(f"no task {task_id!r} in queue {queue!r}")
        if before.startswith("@"):
            before = "active"
        if before not in allowed:
            hint = ": cancel it instead" if before == "active" and verb != "run" else ""
            raise StateRefused(
                f"cannot {verb} task {task_id!r} in queue {queue!r}: it is {before}; only "
                f"{either(allowed)} tasks can be {_PAST[verb]}{hint}",
                state=before,
                allowed=allowed,
            )
        if verb != "run":
            await publish_done(b, queue, _ENDED[verb], [task_id])

    async def _bulk(self, queue: str, state: str, verb: str, allowed: tuple[str, ...]) -> int:
        check_queue_name(queue)
        state = _state(state)
        if state not in allowed:
            raise StateRefused(
                f"cannot {verb} all {state} tasks of queue {queue!r}: only {either(allowed)} "
                f"tasks can be {_PAST[verb]}",
                state=state,
                allowed=allowed,
            )
        b = self._broker
        k = queue_keys(b.prefix, queue)
        size_cmds = (
            [("LLEN", k.pending), ("ZCARD", k.ready)]
            if state == "pending"
            else [("ZCARD", getattr(k, state))]
        )
        replies = await b.run(lambda: b.scripts([], [*self._known_commands(queue), *size_cmds]))
        await self._check_known(queue, replies[:2])
        # Only what was there when the call began: a source that keeps filling up does
        # not keep the loop going.
        size = sum(int(x) for x in replies[2:])
        moved = taken = 0
        while taken < size:
            limit = min(BULK_BATCH, size - taken)
            call = self._call(verb, queue, "all", state, limit)
            reply = scripts.parse_bulk(await b.run(functools.partial(b.script, call)))
            moved += reply.moved
            taken += reply.taken
            if reply.ids:
                await publish_done(b, queue, _ENDED[verb], reply.ids)
            if reply.taken < limit:
                break
        return moved


_FLOW_STATES = ("pending", "running", "completed", "failed", "cancelled")


def _state(state: object) -> str:
    value = state.value if isinstance(state, State) else state
    if not isinstance(value, str) or value not in _STATES:
        raise InvalidOption(f"unknown task state {state!r}: use one of {', '.join(_STATES)}")
    return value


def _day(days_ago: int) -> str:
    return (datetime.now(UTC).date() - timedelta(days=days_ago)).isoformat()
