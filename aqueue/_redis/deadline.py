"""The Broker's call deadlines without a timer each: they are on the hot path (one per
server call). A task's timeout scope is the worker's (``_worker/runner.py``)."""

from __future__ import annotations

import asyncio
import math
from typing import Any


class Watch:
    """One call under a ``Watchdog``: its deadline, its task, and whether it expired."""

    __slots__ = ("deadline", "expired", "task")

    def __init__(self, deadline: float, task: asyncio.Task[Any]) -> None:
        self.deadline = deadline
        self.task = task
        self.expired = False


class Watchdog:
    """Deadlines for a Broker's calls without a timer per call.

    A cancel scope or ``asyncio.timeout`` per call schedules and cancels a timer each
    time, about as costly as all of aqueue's own work in an enqueue. Here a call only
    registers its deadline. One timer, set for the earliest deadline in flight, cancels
    the calls past theirs, and each such call turns that cancellation into
    ``BrokerUnavailable`` (see ``Broker.run``). As calls of one broker share a timeout,
    a new call's deadline is almost never the earliest: the timer is rarely moved, and
    it fires about once per timeout while calls are in flight, not at all when idle.
    """

    def __init__(self) -> None:
        self._watched: set[Watch] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = math.inf

    def start(self, seconds: float) -> Watch:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        watch = Watch(loop.time() + seconds, task)
        self._watched.add(watch)
        if watch.deadline < self._due or self._loop is not loop:
            self._arm(loop, watch.deadline)
        return watch

    def stop(self, watch: Watch) -> None:
        self._watched.discard(watch)

    def _arm(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop, self._due = loop, due
        self._timer = loop.call_at(due, self._check)

    def _check(self) -> None:
        loop = self._loop
        assert loop is not None
        self._timer, self._due = None, math.inf
        now = loop.time()
        for watch in list(self._watched):
            if watch.task.done():  # a call from a loop that is gone
                self._watched.discard(watch)
            elif watch.deadline <= now:
                self._watched.discard(watch)
                watch.expired = True
                watch.task.cancel()
        if self._watched:
            self._arm(loop, min(w.deadline for w in self._watched))
