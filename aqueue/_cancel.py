"""Cancelling one task, shared by ``Client.cancel``, ``Inspector.cancel`` and ``aqueue
task cancel``; and the done notice the admin side sends for the tasks it ends, which
wakes anyone waiting in ``Client.result``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ._redis import scripts
from ._redis.broker import Broker
from ._redis.keys import Done, cancel_channel, done_channel, done_notice, queue_keys
from ._task import ACTION_STATES, Action, check_queue_name
from .errors import TaskNotFound

_ARCHIVABLE = ACTION_STATES[Action.ARCHIVE]


async def cancel_task(broker: Broker, queue: str, task_id: str) -> str:
    """Cancel one task; return the state it was in. See cancel.lua."""
    check_queue_name(queue)
    call = scripts.cancel(queue_keys(broker.prefix, queue), task_id, int(time.time() * 1000))
    state = scripts.parse_state(await broker.run(lambda: broker.script(call)))
    if state is None:
        raise TaskNotFound(f"no task {task_id!r} in queue {queue!r}")
    if state == "active":
        # Wake the worker now; if it misses this, it finds the request at its next
        # heartbeat, or the reaper archives the task if the worker is gone.
        message = f"{queue}|{task_id}"
        await broker.run(lambda: broker.redis.publish(cancel_channel(broker.prefix), message))
    elif state in _ARCHIVABLE:
        # Archived now: wake anyone waiting for its result.
        await publish_done(broker, queue, Done.ARCHIVED, [task_id])
    return state


async def publish_done(broker: Broker, queue: str, kind: Done, ids: Sequence[str]) -> None:
    """Tell ``Client.result`` waiters that these tasks reached a final state or are gone."""
    if ids:
        message = done_notice(kind, ids)
        channel = done_channel(broker.prefix, queue)
        await broker.run(lambda: broker.redis.publish(channel, message))
