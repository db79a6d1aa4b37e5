"""The tasks a worker holds: claimed and not yet ended, by queue and id.

The dispatcher adds each task it claims; the outcome writer removes it once its
outcome is written (or given up). The heartbeat checks them for cancel requests, the
cancel listener and the lease keeper cancel them, the audit leaves them in the lease
lists, and a graceful shutdown waits for there to be none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import anyio

from .runner import Claimed, Reason

log = logging.getLogger("aqueue.worker")


class Held:
    """The claimed tasks of one worker by (queue, id): the registry every part that
    cancels, audits or waits for the tasks reads, and only the dispatcher and the outcome
    writer change."""

    __slots__ = ("_empty", "_since", "_tasks")

    def __init__(self) -> None:
        self._tasks: dict[tuple[str, str], Claimed] = {}
        # When each was claimed (Unix ms): the heartbeat publishes it for the dashboard.
        self._since: dict[tuple[str, str], int] = {}
        # Set only while someone waits for the last task to end.
        self._empty: anyio.Event | None = None

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[Claimed]:
        return iter(self._tasks.values())

    def add(self, c: Claimed) -> None:
        self._tasks[(c.queue, c.id)] = c
        self._since[(c.queue, c.id)] = int(time.time() * 1000)

    def remove(self, c: Claimed) -> None:
        tasks = self._tasks
        tasks.pop((c.queue, c.id), None)
        self._since.pop((c.queue, c.id), None)
        if not tasks and self._empty is not None:
            self._empty.set()
            self._empty = None

    def take_all(self) -> list[Claimed]:
        """Every task, no longer held."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self._since.clear()
        return tasks

    def since(self) -> dict[str, dict[str, int]]:
        """When each held task was claimed (Unix ms), by queue and id."""
        out: dict[str, dict[str, int]] = {}
        for (queue, task_id), ms in self._since.items():
            out.setdefault(queue, {})[task_id] = ms
        return out

    def ids(self, queue: str) -> list[str]:
        return [c.id for c in self._tasks.values() if c.queue == queue]

    async def wait_empty(self) -> None:
        while self._tasks:
            self._empty = anyio.Event()
            await self._empty.wait()

    def cancel(self, queue: str, task_id: str) -> bool:
        """Cancel the handler of a task, if this worker holds it (a cancel request)."""
        c = self._tasks.get((queue, task_id))
        if c is None:
            return False
        log.info("task %s (%s) on %s: cancel requested", c.id, c.body.type, queue)
        c.cancel(Reason.CANCEL)
        return True

    def cancel_queue(self, queue: str, reason: Reason) -> int:
        """Cancel the handlers of one queue's tasks; how many there were."""
        held = [c for c in self._tasks.values() if c.queue == queue]
        for c in held:
            c.cancel(reason)
        return len(held)

    def cancel_all(self, reason: Reason) -> None:
        for c in list(self._tasks.values()):
            c.cancel(reason)
