"""Noting the task types this worker claimed but has no handler for, so that an operator
sees them (``aqueue stats``, the dashboard) instead of finding tasks that retry for
days. The task itself is retried by the runner as before: a newer worker may know it.
"""

from __future__ import annotations

import logging
import math
import time

import redis.exceptions as rexc

from .._reads import UNKNOWN_TTL_MS, unknown_types_key
from .._redis.broker import Broker
from ..errors import AqueueError

log = logging.getLogger("aqueue.worker")

# Seconds between two notes of one (queue, type) by one worker: a backlog of tasks of
# one unknown type costs a write every so often, not one per task.
EVERY = 10.0
# (queue, type) pairs remembered; beyond it the memory starts afresh.
_MAX_REMEMBERED = 1000


class UnknownTypes:
    """Writes ``type -> last seen (ms)`` into the queue's ``unknown`` hash (plain
    commands, kept a day after the last note) when the runner meets a task whose type
    no handler of the mux serves."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._noted: dict[tuple[str, str], float] = {}

    async def note(self, queue: str, task_type: str) -> None:
        now = time.monotonic()
        if now - self._noted.get((queue, task_type), -math.inf) < EVERY:
            return
        if len(self._noted) >= _MAX_REMEMBERED:
            self._noted.clear()
        self._noted[(queue, task_type)] = now
        broker = self._broker
        key = unknown_types_key(broker.prefix, queue)
        commands = [
            ("HSET", key, task_type, int(time.time() * 1000)),
            ("PEXPIRE", key, UNKNOWN_TTL_MS),
        ]
        try:
            await broker.run(lambda: broker.scripts([], commands))
        except (AqueueError, rexc.RedisError) as exc:
            # Only a note: the task's own retry is written by the outcome writer.
            log.debug("could not note unknown task type %r of queue %s: %s", task_type, queue, exc)
