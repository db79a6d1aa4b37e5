"""What the parts of a ``Worker`` share: its settings, its serving state and slot
accounting. ``Claiming`` (claims), ``Running`` (handlers and outcomes) and ``Worker``
(lifecycle) build on it, one module each; server outages are an ``Outage`` of their
own (``_outage``), which every part reports its server calls to."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from .._redis.broker import Broker
from .._redis.keys import QueueKeys
from .outage import Outage
from .runner import Claimed, Runner

if TYPE_CHECKING:
    from .lease import LeaseKeeper

log = logging.getLogger("aqueue.worker")

# How long one BLMOVE blocks before the worker re-checks pauses and shutdown.
BLOCK_SECONDS = 1.0


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
    _outage: Outage

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
        # Cancelled by stop(): ends a wait for the server at start.
        self._start_scope = anyio.CancelScope()

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
