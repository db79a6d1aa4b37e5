"""Reading what the server holds, as the public Structs: tasks (for ``Client.result``
and the Inspector), queue names, live workers, and the cron entries the schedulers
registered; and, for ``aqueue stats`` and the dashboard, the task types workers met
without a handler, and which worker holds an active task since when.

Functions of a ``Broker``, so that each caller reads through its own (its errors name
the caller's URL, its calls share the caller's watchdog). Reads are pipelined plain
commands, never a script: a consistent-enough snapshot in one or two round trips.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis.exceptions as rexc

from ._codec import decode_message, decode_value
from ._cron import CronEntry, CronRun, CronSpec
from ._limits import LimitInfo, LimitSpec
from ._redis.broker import Broker
from ._redis.keys import queue_keys, queues_key, worker_key, workers_key
from ._task import TaskInfo, WorkerInfo, check_queue_name, from_ms
from .errors import BrokerUnavailable, TaskNotFound

# Per task, read_tasks reads these hash fields, then these sorted-set scores.
_TASK_HASHES = ("states", "tasks", "retried", "errors", "failed_at", "results", "progress")
_TASK_SETS = ("scheduled", "retry", "completed")

# Per queue, beside the keys of ``_redis.keys``: ``unknown`` (HASH task type -> when a
# worker last claimed a task of that type and had no handler for it, ms), written with
# plain commands by the worker (``_worker/unknown``) and kept a day after the last note.
UNKNOWN_TTL_MS = 86_400_000


def unknown_types_key(prefix: str, queue: str) -> str:
    return queue_keys(prefix, queue).base + "unknown"


async def read_eviction_policy(broker: Broker) -> str | None:
    """The server's ``maxmemory-policy``; None when CONFIG is refused (managed servers
    often disable it). Anything but ``noeviction`` may evict tasks when memory runs out."""
    try:
        config: dict[Any, Any] = await broker.run(
            lambda: broker.redis.config_get("maxmemory-policy")
        )
    except (BrokerUnavailable, rexc.ResponseError):
        return None
    value = config.get(b"maxmemory-policy", config.get("maxmemory-policy"))
    return text(value) if value is not None else None


async def read_unknown_types(
    broker: Broker, queues: Sequence[str]
) -> dict[str, dict[str, datetime]]:
    """Per queue (those with any), the task types a worker claimed in the last day but
    had no handler for, with when it last did."""
    b = broker
    commands = [("HGETALL", unknown_types_key(b.prefix, q)) for q in queues]
    replies = await b.run(lambda: b.scripts([], commands)) if commands else []
    oldest = int(time.time() * 1000) - UNKNOWN_TTL_MS
    out: dict[str, dict[str, datetime]] = {}
    for queue, seen in zip(queues, replies, strict=True):
        types = {
            text(t): datetime.fromtimestamp(int(ms) / 1000, tz=UTC)
            for t, ms in sorted(seen.items())
            if int(ms) > oldest
        }
        if types:
            out[queue] = types
    return out


async def read_queues(broker: Broker) -> list[str]:
    """Names of every queue a client or worker has used, sorted."""
    names = await broker.run(lambda: broker.redis.smembers(queues_key(broker.prefix)))
    return sorted(text(n) for n in names)


async def read_limits(broker: Broker) -> list[LimitInfo]:
    """Every limit declared on a queue a client or worker has used, with how many of its
    slots are taken now and how many keys have pending or active tasks under it."""
    queues = await read_queues(broker)

    async def read() -> list[Any]:
        pipe = broker.redis.pipeline(transaction=False)
        for queue in queues:
            k = queue_keys(broker.prefix, queue)
            pipe.hgetall(k.limits)
            pipe.hgetall(k.running)
            pipe.hgetall(k.lanes)
        return list(await pipe.execute())

    replies = await broker.run(read)
    out: list[LimitInfo] = []
    for i, queue in enumerate(queues):
        declared, running, lanes = replies[3 * i : 3 * i + 3]
        for field, value in sorted((text(f), v) for f, v in declared.items()):
            spec = LimitSpec.decode(value)
            task_type = None if field == "q" else field.removeprefix("t:")
            busy, keys = _limit_use(task_type, running, list(lanes))
            held_back = int(lanes.get(b"#hb:" + field.encode(), 0))
            out.append(LimitInfo(
                queue=queue, task_type=task_type, rate_limit=spec.rate,
                concurrency_limit=spec.concurrency, running=busy, keys=keys,
                held_back=held_back,
            ))  # fmt: skip
    return out


def _limit_use(
    task_type: str | None, running: dict[bytes, bytes], lanes: list[bytes]
) -> tuple[int, int]:
    """Slots taken and keys in use for the queue's limit (``task_type`` None) or a task
    type's, from the queue's ``running`` hash and its lanes (lib/flow.lua's names)."""
    if task_type is None:
        busy = int(running.get(b"q", 0))
        prefix = b"t\2"
        lane_keys = {lane.split(b"\2", 2)[2] for lane in lanes if lane[:1].isdigit()}
    else:
        busy = 0
        prefix = b"t\2" + task_type.encode() + b"\2"
        tagged = b"\2" + task_type.encode() + b"\2"
        lane_keys = {lane[len(tagged) + 1 :] for lane in lanes if lane[1:].startswith(tagged)}
    keys = set(lane_keys)
    for limit, n in running.items():
        if limit.startswith(prefix) and int(n) > 0:
            keys.add(limit[len(prefix) :] if task_type is not None else limit.split(b"\2", 2)[2])
            if task_type is not None:
                busy += int(n)
    keys.discard(b"")
    return busy, len(keys)


async def get_task(broker: Broker, queue: str, task_id: str) -> TaskInfo:
    """One task as stored now; ``TaskNotFound`` if there is no such task."""
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


def _task_info(queue: str, task_id: str, replies: Sequence[Any]) -> TaskInfo | None:
    state, message, retried, error, failed_at, result, progress, sched, retry, done = replies
    if state is None or message is None:
        return None
    header, body = decode_message(message)
    max_retry = header.max_retry
    state_text = text(state)
    due = sched if state_text == "scheduled" else retry if state_text == "retry" else None
    completed_at = None
    if state_text == "completed" and isinstance(done, float):
        completed_at = from_ms(int(done - body.retention * 1000))
    return TaskInfo(
        id=task_id,
        queue=queue,
        type=body.type,
        payload=decode_value(body.payload),
        state="active" if state_text.startswith("@") else state_text,
        max_retry=max_retry,
        retried=int(retried) if retried is not None else 0,
        last_error=text(error) if error is not None else None,
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
        priority=header.priority,
        limit_key=header.limit_key or None,
        flow_id=header.flow_id,
    )


@dataclass(frozen=True)
class LiveWorker:
    """A live worker as the dashboard shows it: ``info`` as ``Inspector.workers`` gives
    it, its ``lease_ttl`` and when it last renewed its lease (both None when its
    registry card does not say), and when it claimed each task it held at that
    renewal, by (queue, id)."""

    info: WorkerInfo
    lease_ttl: float | None
    heartbeat_at: datetime | None
    claimed_at: dict[tuple[str, str], datetime]


@dataclass(frozen=True)
class Holder:
    """The worker holding an active task: its id, the worker (None once its lease has
    expired: the reaper returns the task), and when it claimed the task (None if it
    claimed it after its last heartbeat)."""

    worker_id: str
    worker: LiveWorker | None
    claimed_at: datetime | None


async def read_workers(broker: Broker) -> list[WorkerInfo]:
    """Live workers, each with the tasks it is running now, oldest started first."""
    return [w.info for w in await read_live_workers(broker)]


async def read_live_workers(broker: Broker, *, active: bool = True) -> list[LiveWorker]:
    """``read_workers`` with each worker's last heartbeat and claim times; without its
    active tasks when ``active`` is false (one round trip less, and no task read)."""
    b = broker
    now = int(time.time() * 1000)
    entries = cast(
        list[tuple[bytes, float]],
        await b.run(
            lambda: b.redis.zrangebyscore(workers_key(b.prefix), f"({now}", "+inf", withscores=True)
        ),
    )
    if not entries:
        return []
    # One GET each in a pipeline, not MGET: on a cluster the cards live on any node.
    read = b.redis.pipeline(transaction=False)
    for i, _ in entries:
        read.get(worker_key(b.prefix, text(i)))
    cards = await b.run(read.execute)
    live = [
        w
        for w in (
            _live_worker(card, expiry) for card, (_, expiry) in zip(cards, entries, strict=True)
        )
        if w is not None
    ]
    workers = [w.info for w in live]
    leases = [(w, q) for w in workers for q in w.queues] if active else []
    pipe = b.redis.pipeline(transaction=False)
    for w, q in leases:
        pipe.lrange(queue_keys(b.prefix, q).lease(w.id), 0, -1)
    held = await b.run(pipe.execute) if leases else []
    # A lease list has the newest claim on the left: read it from the right.
    refs = [(q, text(i)) for (_, q), ids in zip(leases, held, strict=True) for i in ids[::-1]]
    owners = [w for (w, _), ids in zip(leases, held, strict=True) for _ in ids]
    for w, task in zip(owners, await read_tasks(b, refs), strict=True):
        if task is not None and task.state == "active":
            w.active.append(task)
    return sorted(live, key=lambda w: (w.info.started_at, w.info.id))


async def read_holder(broker: Broker, queue: str, task_id: str) -> Holder | None:
    """The worker holding the task, if it is active (its state names the claim's
    token, ``<worker id>.<n>``), with its registry card as of its last heartbeat."""
    b = broker
    state = await b.run(lambda: b.redis.hget(queue_keys(b.prefix, queue).states, task_id))
    if state is None or not text(state).startswith("@"):
        return None
    worker_id = text(state)[1:].rpartition(".")[0]
    read = b.redis.pipeline(transaction=False)
    read.get(worker_key(b.prefix, worker_id))
    read.zscore(workers_key(b.prefix), worker_id)
    card, expiry = await b.run(read.execute)
    worker = _live_worker(card, expiry) if expiry is not None else None
    claimed = worker.claimed_at.get((queue, task_id)) if worker is not None else None
    return Holder(worker_id=worker_id, worker=worker, claimed_at=claimed)


def _live_worker(card: bytes | str | None, expiry: float) -> LiveWorker | None:
    """A registry card (written by the worker's lease keeper) and the lease expiry the
    registry holds for it; ``None`` when it expired between the two reads or cannot be
    read."""
    if not isinstance(card, bytes):
        return None
    try:
        data = decode_value(card)
        queues = {str(q): float(w) for q, w in data["queues"].items()}
        info = WorkerInfo(
            id=str(data["id"]),
            host=str(data["host"]),
            pid=int(data["pid"]),
            queues=queues,
            concurrency=int(data["concurrency"]),
            started_at=from_ms(int(data["started_at"])) or datetime.now(UTC),
        )
        ttl = data.get("lease_ttl")
        beat = from_ms(int(expiry - float(ttl) * 1000)) if ttl is not None else None
        claimed = {
            (str(q), str(i)): from_ms(int(ms)) or datetime.now(UTC)
            for q, held in (data.get("held") or {}).items()
            for i, ms in held.items()
        }
        lease_ttl = float(ttl) if ttl is not None else None
        return LiveWorker(info=info, lease_ttl=lease_ttl, heartbeat_at=beat, claimed_at=claimed)
    except Exception:  # a card written by another version: skip it, do not fail
        return None


async def read_cron_entries(broker: Broker) -> list[CronEntry]:
    """Every cron entry any scheduler has registered, once each, with next and last runs
    and recent history (newest first)."""
    b = broker
    names = await read_queues(b)
    commands: list[tuple[Any, ...]] = []
    for q in names:
        k = queue_keys(b.prefix, q)
        commands += [("HGETALL", k.crondef), ("HGETALL", k.cron), ("LRANGE", k.cronlog, 0, -1)]
    replies = await b.run(lambda: b.scripts([], commands)) if commands else []
    now = int(time.time() * 1000)
    out: list[CronEntry] = []
    for i, q in enumerate(names):
        defs, lasts, log_items = replies[3 * i : 3 * i + 3]
        history: dict[str, list[CronRun]] = {}
        for item in log_items:
            name, tick, task_id = item.decode().rsplit("|", 2)
            history.setdefault(name, []).append(CronRun(tick=from_ms(int(tick)), task_id=task_id))  # type: ignore[arg-type]
        for raw_name, raw_def in sorted(defs.items()):
            name = raw_name.decode()
            d = decode_value(raw_def)
            spec = CronSpec(name, d["spec"], d["task"], None, {}, tz=d["tz"])
            last = lasts.get(raw_name)
            out.append(
                CronEntry(
                    name=name,
                    spec=d["spec"],
                    tz=d["tz"],
                    task=d["task"],
                    queue=q,
                    next_run=from_ms(spec.next_after(now)),
                    last_run=from_ms(int(last)) if last is not None else None,
                    history=history.get(name, []),
                )
            )
    return out


def text(value: Any) -> str:
    """A reply as text (replies are bytes, or str with ``decode_responses``)."""
    return value.decode() if isinstance(value, bytes) else str(value)
