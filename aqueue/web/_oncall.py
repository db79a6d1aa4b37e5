"""What the dashboard reads beyond the Inspector's figures, for whoever is on call: the
queues whose pending tasks no live worker serves, the task types no worker has a handler
for, the last hour minute by minute, and the searches (a task by id in any queue, the
tasks of one type among a queue's listed tasks)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from .. import _minutes as minutes
from .._inspector import Inspector
from .._reads import read_live_workers, read_tasks, read_unknown_types
from .._task import QueueInfo, TaskInfo
from ._views import MinuteChart, minute_chart

# The most tasks of one state a search by type reads (list_tasks' first page).
TYPE_SCAN = 1000


@dataclass(frozen=True)
class Watch:
    """What needs an operator: ``unserved`` queues hold pending tasks and no live worker
    lists them; ``unknown`` holds, per queue, the task types workers claimed in the last
    day without a handler for them (with when they last did); ``minutes`` charts the
    queues' last hour."""

    unserved: list[QueueInfo]
    unknown: dict[str, dict[str, datetime]]
    minutes: MinuteChart


async def watch(inspector: Inspector, infos: Sequence[QueueInfo]) -> Watch:
    """Keep this reading in the per-minute ring, then read what ``Watch`` shows."""
    b = inspector.broker
    names = [i.queue for i in infos]
    await minutes.record(b, infos)
    live, unknown, ring = await asyncio.gather(
        read_live_workers(b, active=False),
        read_unknown_types(b, names),
        minutes.read(b, names),
    )
    served = {q for w in live for q in w.info.queues}
    series = minutes.total(list(ring.values())) or minutes.per_minute([], int(time.time() * 1000))
    return Watch(
        unserved=[i for i in infos if i.pending and i.queue not in served],
        unknown=unknown,
        minutes=minute_chart(series),
    )


async def find_task(inspector: Inspector, task_id: str, queue: str | None) -> list[TaskInfo]:
    """The tasks with this id in ``queue``, or in every queue (one read for all)."""
    names = [queue] if queue else await inspector.queues()
    found = await read_tasks(inspector.broker, [(q, task_id) for q in names])
    return [t for t in found if t is not None]


async def of_type(
    inspector: Inspector, queue: str, state: str, task_type: str
) -> tuple[list[TaskInfo], int]:
    """The tasks of ``task_type`` (a name ending in ``:`` matches as a prefix, as a Mux
    pattern does) among the first ``TYPE_SCAN`` of the queue's tasks in ``state``, and
    how many were looked at."""
    tasks = await inspector.list_tasks(queue, state, page=1, size=TYPE_SCAN)
    prefix = task_type.endswith(":")
    matching = [
        t for t in tasks if t.type == task_type or (prefix and t.type.startswith(task_type))
    ]
    return matching, len(tasks)


async def existing(inspector: Inspector, refs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these (queue, id) tasks still exist (one read for all)."""
    found = await read_tasks(inspector.broker, refs)
    return {(t.queue, t.id) for t in found if t is not None}
