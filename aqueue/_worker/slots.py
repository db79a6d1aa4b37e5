"""How many tasks a worker may still claim: the one place its concurrency is counted.

A slot is taken *before* a claim is sent, and given back for each task the claim did
not bring, for each blocking claim that came back empty, and for each task whose
outcome is written (acks included: a task waiting for its ack still holds its slot).
So the worker never holds more claimed tasks than ``concurrency``, even with claims
in flight. The count can dip below zero for a moment: the ack writer takes the slots
of the next claims before the acks that free them are written, in the same round trip.
"""

from __future__ import annotations

from collections.abc import Awaitable

import anyio


class Slots:
    """The free slots, and the dispatcher's wait for one."""

    __slots__ = ("_waiter", "free")

    def __init__(self, n: int) -> None:
        self.free = n
        # Set only while the dispatcher waits: an event per finished task is costly.
        self._waiter: anyio.Event | None = None

    def take(self, n: int) -> None:
        self.free -= n

    def give(self, n: int) -> None:
        if n:
            self.free += n
            self.wake()

    @property
    def awaited(self) -> bool:
        """Whether the dispatcher waits for a slot: every slot is taken."""
        return self._waiter is not None

    def wait(self) -> Awaitable[None]:
        """Await until a slot is given back or ``wake()`` is called (the event's own
        wait, with no coroutine of ours around it)."""
        self._waiter = event = anyio.Event()
        return event.wait()

    def wake(self) -> None:
        """End the dispatcher's wait, with or without a free slot (to stop)."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()
