"""What the parts of a ``Worker`` share: its settings, its serving state, slot
accounting and outage handling. ``Claiming`` (claims), ``Running`` (handlers and
outcomes) and ``Worker`` (lifecycle) build on it, one module each."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from ._broker import Broker
from ._keys import QueueKeys
from ._runner import Claimed, Runner

if TYPE_CHECKING:
    from ._lease import LeaseKeeper

log = logging.getLogger("aqueue.worker")

# How long one BLMOVE blocks before the worker re-checks pauses and shutdown.
BLOCK_SECONDS = 1.0
MAX_BACKOFF = 5.0


class WorkerState:
    """Attributes set by ``Worker.__init__`` and ``_init_state``, and the small methods
    every part uses."""

    queues: dict[str, float]
    concurrency: int
    strict_priority: bool
    batch_size: int
    shutdown_timeout: float
    id: str
    _broker: Broker
    _keys: dict[str, QueueKeys]
    _lease: dict[str, str]
    _order: list[str]
    _runner: Runner
    _leases: LeaseKeeper
    _blockers: anyio.abc.TaskGroup
    _backoff: float

    def _init_state(self) -> None:
        self._stopping = False
        self._free = self.concurrency
        self._held: dict[tuple[str, str], Claimed] = {}
        self._acks: dict[str, list[tuple[Claimed, bytes]]] = {}
        self._requeue: dict[str, list[Claimed]] = {}
        self._seq = 0
        self._paused_until: dict[str, float] = {}
        self._blocking: set[str] = set()
        # Queues whose lease list may hold ids we do not know (a lost reply).
        self._suspect: set[str] = set()
        # Claimed tasks wait here for a runner; idle runners wait on these futures.
        self._ready: deque[Claimed] = deque()
        self._idle_slots: deque[asyncio.Future[Claimed | None]] = deque()
        self._slots_closed = False
        # Set only while someone waits: creating an event per finished task is costly.
        self._slot_waiter: anyio.Event | None = None
        self._idle_waiter: anyio.Event | None = None
        self._claim_event = anyio.Event()
        self._ack_event = anyio.Event()
        self._claim_scope = anyio.CancelScope()
        self._down_since: float | None = None
        self._back = anyio.Event()

    # -- slots -------------------------------------------------------------------------

    def _release(self, n: int) -> None:
        if n:
            self._free += n
            if self._slot_waiter is not None:
                self._slot_waiter.set()
                self._slot_waiter = None

    def _wake_dispatcher(self) -> None:
        if self._slot_waiter is not None:
            self._slot_waiter.set()
            self._slot_waiter = None
        self._claim_event.set()
        self._claim_event = anyio.Event()

    def _forget(self, c: Claimed, slots: int = 1) -> None:
        self._held.pop((c.queue, c.id), None)
        self._release(slots)
        if not self._held and self._idle_waiter is not None:
            self._idle_waiter.set()
            self._idle_waiter = None

    # -- outages -----------------------------------------------------------------------

    async def _outage(self, exc: BaseException, sleep: float | None = None) -> None:
        """Log once per outage, then back off (capped) before the caller tries again."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self._backoff = 0.1
            log.warning("lost the server (%s); retrying with backoff up to %g s", exc, MAX_BACKOFF)
        else:
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        # The first call that finds the server back ends every backoff at once.
        with anyio.move_on_after(self._backoff if sleep is None else sleep):
            await self._back.wait()

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning("server reachable again after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None
            self._back.set()
            self._back = anyio.Event()
