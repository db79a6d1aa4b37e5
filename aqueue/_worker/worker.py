"""The consumer side: ``Worker`` claims tasks into its lease, runs them, writes outcomes.

This module holds the public class and its lifecycle: it builds the parts (``_Parts``),
each in its own module and handed the few collaborators it needs, runs their loops,
and shuts down gracefully. Every part reports its server calls to one ``Outage``
(``outage``: backoff and log policy).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

from .._limits import LimitSpec
from .._mux import Mux
from .._redis import scripts
from .._redis.broker import DEFAULT_PREFIX, DEFAULT_URL, Broker, ServerLike
from .._redis.keys import QueueKeys, queue_keys
from .._task import DEFAULT_QUEUE, check_queue_name, seconds
from ..errors import AqueueError, BrokerUnavailable, InvalidOption
from .audit import LeaseAudit
from .boot import Boot
from .claims import BLOCK_SECONDS, Dispatcher
from .flows import FlowPump
from .forwarder import Forwarder
from .held import Held
from .janitor import Janitor
from .lease import LeaseKeeper
from .listener import CancelListener
from .outage import Outage
from .outcomes import Outcomes
from .processor import Handoff, Processor
from .reaper import Reaper
from .runner import IsFailure, OnError, Reason, RetryDelay, Runner
from .scheduler import Scheduler
from .slots import Slots
from .successor import check_worker_id, take_over
from .unknown import UnknownTypes

log = logging.getLogger("aqueue.worker")


class Worker:
    """Runs handlers of a ``Mux`` for a set of queues, inside the caller's event loop.

    ``await worker.run()`` serves until SIGTERM/SIGINT (in the main thread) or until
    cancelled; ``async with worker:`` serves in the background of the block, e.g. in
    a web application's lifespan, and shuts down gracefully on exit.
    """

    def __init__(
        self,
        mux: Mux,
        url_or_redis: ServerLike = DEFAULT_URL,
        *,
        concurrency: int = 10,
        queues: Mapping[str, int | float] | Sequence[str] | None = None,
        strict_priority: bool = False,
        shutdown_timeout: float = 10,
        lease_ttl: float = 30,
        retry_delay: RetryDelay | None = None,
        is_failure: IsFailure | None = None,
        on_error: OnError | None = None,
        scheduler: bool = True,
        timeout: float = 5.0,
        batch_size: int = 100,
        max_archived: int = 10_000,
        archive_ttl: float = 90 * 86400,
        prefix: str = DEFAULT_PREFIX,
        worker_id: str | None = None,
    ) -> None:
        if not isinstance(mux, Mux):
            raise InvalidOption(f"Worker needs a Mux, got {mux!r}")
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise InvalidOption(f"concurrency must be an int >= 1, got {concurrency!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidOption(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.mux = mux
        self.url_or_redis = url_or_redis
        self.options: dict[str, Any] = {
            "concurrency": concurrency, "queues": queues, "strict_priority": strict_priority,
            "shutdown_timeout": shutdown_timeout, "lease_ttl": lease_ttl,
            "retry_delay": retry_delay, "is_failure": is_failure, "on_error": on_error,
            "scheduler": scheduler, "timeout": timeout, "batch_size": batch_size,
            "max_archived": max_archived, "archive_ttl": archive_ttl, "prefix": prefix,
            "worker_id": worker_id,
        }  # fmt: skip
        self.queues = _weights(queues, mux)
        # Without queues=, the worker serves every queue its mux's handlers name; with
        # them, the handler queues it leaves out are named once at start (a WARNING).
        self._queues_given = queues is not None
        self._unserved = sorted(handler_queues(mux) - set(self.queues))
        self.concurrency = concurrency
        self.strict_priority = strict_priority
        self.shutdown_timeout = seconds(shutdown_timeout, "shutdown_timeout")
        self.lease_ttl = seconds(lease_ttl, "lease_ttl", allow_zero=False)
        self.scheduler = scheduler
        self.batch_size = batch_size
        if not isinstance(max_archived, int) or max_archived < 0:
            raise InvalidOption(f"max_archived must be an int >= 0, got {max_archived!r}")
        self.max_archived = max_archived
        self.archive_ttl = seconds(archive_ttl, "archive_ttl")
        # A stable id (a pod's name, a supervisor slot) lets a restarted worker take
        # its predecessor's leases back at once (``successor``).
        self._id_given = worker_id is not None
        self.id = check_worker_id(worker_id) if worker_id is not None else uuid.uuid4().hex[:16]
        # Blocking claims hold a connection for BLOCK_SECONDS: reads may take that long.
        # One connection per blocking claim, per handler writing progress, plus the
        # acker, heartbeat, reaper and forwarder.
        self._broker = Broker(
            url_or_redis,
            timeout=timeout,
            prefix=prefix,
            socket_timeout=timeout + BLOCK_SECONDS + 1,
            max_connections=concurrency + len(self.queues) + 8,
        )
        self._keys: dict[str, QueueKeys] = {q: queue_keys(prefix, q) for q in self.queues}
        self._leases: dict[str, str] = {q: k.lease(self.id) for q, k in self._keys.items()}
        self._runner = Runner(
            mux,
            retry_delay=retry_delay,
            is_failure=is_failure,
            on_error=on_error,
            limiter=anyio.CapacityLimiter(concurrency),
            on_unknown=UnknownTypes(self._broker).note,
        )
        self._outage = Outage(log)
        self._outer: anyio.abc.TaskGroup | None = None
        self._running = False
        self._stopping = False
        # The parts of the current (or last) run: anyio's objects need a running loop.
        self._parts: _Parts | None = None

    # -- public lifecycle ------------------------------------------------------------

    def replace(self, url_or_redis: ServerLike | None = None, **changes: Any) -> Worker:
        """A new, stopped Worker with the same settings except ``changes``."""
        return Worker(self.mux, url_or_redis or self.url_or_redis, **{**self.options, **changes})

    @property
    def broker(self) -> Broker:
        return self._broker

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (when run in the main thread) or cancellation.

        A server that is down or still loading its data is waited for, with the backoff
        of an outage; what waiting cannot fix (refused credentials, a peer that is not
        Redis, a server too old) raises at once (``BrokerUnavailable``/``AqueueError``).
        """
        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            if threading.current_thread() is threading.main_thread():
                tg.start_soon(self._watch_signals)
            try:
                await self._serve(wait=True)
            except Exception as exc:  # raised plain, not wrapped by the task group
                error = exc
            finally:
                tg.cancel_scope.cancel()
        if error is not None:
            raise error

    def stop(self) -> None:
        """Begin a graceful shutdown: stop claiming, let handlers finish within
        ``shutdown_timeout``, then cancel them and return their tasks to the queue."""
        self._stopping = True
        if self._running and self._parts is not None:
            self._parts.start_scope.cancel()
            self._parts.dispatcher.stop()

    async def __aenter__(self) -> Worker:
        self._outer = anyio.create_task_group()
        await self._outer.__aenter__()
        try:
            await self._outer.start(self._serve)
        except BaseException as exc:
            outer, self._outer = self._outer, None
            try:
                await outer.__aexit__(type(exc), exc, exc.__traceback__)
            except BaseExceptionGroup as group:
                # The task group reports the startup failure again, wrapped: the caller
                # gets the plain error (e.g. BrokerUnavailable) that start() raised.
                if group.exceptions != (exc,):
                    raise
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._outer is not None
        self.stop()
        await self._outer.__aexit__(None, None, None)
        self._outer = None

    def cancel_held(self, queue: str, task_id: str) -> bool:
        """Cancel the handler of a task this worker runs, if it runs it."""
        return self._parts is not None and self._parts.held.cancel(queue, task_id)

    def not_ready(self) -> str | None:
        """Why this worker cannot serve tasks now, or None when it can: what its
        ``/readyz`` health probe answers. Read on the worker's event loop."""
        parts = self._parts
        if not self._running or parts is None:
            return "not running"
        if self._stopping:
            return "shutting down"
        if parts.lease.valid_until == math.inf:  # never renewed: no first contact yet
            return "waiting for the server"
        if self._outage.down:
            return "cannot reach the server"
        if time.monotonic() >= parts.lease.valid_until:
            return f"lease not renewed within lease_ttl ({self.lease_ttl:g} s)"
        return None

    @property
    def _held(self) -> Held:
        """The tasks this worker holds (``aqueue.testing`` looks)."""
        return self._parts.held if self._parts is not None else Held()

    # -- serving -----------------------------------------------------------------------

    async def _serve(
        self,
        *,
        wait: bool = False,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Make first contact (waiting for the server if ``wait``), then serve until
        stopped. ``run()`` waits; ``async with`` does not, so that an application's
        startup fails, with ``BrokerUnavailable``, while its server is down."""
        if self._running:
            raise AqueueError("this Worker is already running")
        # Every run starts afresh: new parts, nothing held, nothing stopping.
        self._parts = parts = _Parts(self)
        self._stopping = False
        self._running = True
        try:
            if not await self._begin(parts, wait):
                return
            task_status.started()
            try:
                await self._serve_started(parts)
            except anyio.get_cancelled_exc_class():
                # Cancelled from outside (e.g. run() inside a cancelled scope): no time
                # for handlers, but their tasks still go straight back to the queue.
                parts.outcomes.requeue_held()
                await self._finish(parts)
                raise
        finally:
            self._running = False
            with anyio.CancelScope(shield=True):
                await self._broker.close()
        log.info("worker %s stopped", self.id)

    async def _begin(self, parts: _Parts, wait: bool) -> bool:
        """First contact (``Boot.start``); False if ``stop()`` came first."""
        if self._unserved:
            log.warning(
                "worker %s does not serve queue(s) %s, named by its mux's handlers: their "
                "tasks wait for a worker that does (add them to queues=, or -q NAME=WEIGHT)",
                self.id,
                ", ".join(self._unserved),
            )
        with parts.start_scope:
            await parts.boot.start(wait)
            log.info(
                "worker %s serving queues %s with concurrency %d%s",
                self.id,
                dict(self.queues),
                self.concurrency,
                "" if self._queues_given else " (the queues its mux's handlers name)",
            )
            return True
        log.info("worker %s stopped before its server answered", self.id)
        return False

    async def _serve_started(self, parts: _Parts) -> None:
        async with anyio.create_task_group() as background:
            background.start_soon(parts.lease.run)
            background.start_soon(parts.reaper.run)
            background.start_soon(parts.forwarder.run)
            background.start_soon(parts.flows.run)
            background.start_soon(parts.outcomes.run)
            background.start_soon(parts.listener.run)
            if self.scheduler and self.mux.cron_entries:
                scheduler = Scheduler(self._broker, self.mux.cron_entries, self._outage)
                background.start_soon(scheduler.run)
            async with anyio.create_task_group() as processors:
                for _ in range(self.concurrency):
                    processors.start_soon(parts.processor.run)
                try:
                    await parts.dispatcher.run()
                    await self._drain(parts.held)
                finally:
                    parts.handoff.close()
            await self._finish(parts)
            background.cancel_scope.cancel()

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if self._stopping:
                    log.warning("second signal: cancelling running handlers now")
                    self.shutdown_timeout = 0
                    self._held.cancel_all(Reason.SHUTDOWN)
                else:
                    log.info("received %s: shutting down gracefully", signal.Signals(signum).name)
                    self.stop()

    async def _drain(self, held: Held) -> None:
        """Give running handlers ``shutdown_timeout``, then cancel the rest."""
        if held:
            with anyio.move_on_after(self.shutdown_timeout):
                await held.wait_empty()
            held.cancel_all(Reason.SHUTDOWN)

    async def _finish(self, parts: _Parts) -> None:
        """Write the last acks, put shutdown-cancelled tasks back at the head of their
        queues, and release the lease. Shielded: an outer cancellation must not lose
        these writes (bounded by the broker timeout instead)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._broker.timeout * 2):
            try:
                await parts.outcomes.flush()
                back = await parts.lease.leave(parts.outcomes.requeued)
                if back:
                    log.info("returned %d unfinished task(s) to their queues", back)
            except BrokerUnavailable as exc:
                log.warning(
                    "could not release the lease at shutdown (%s); the reaper will return "
                    "its tasks after lease_ttl",
                    exc,
                )


def _encoded(declared: Mapping[str, LimitSpec]) -> list[tuple[str, str]]:
    return [(field, spec.encode()) for field, spec in declared.items()]


class _Parts:
    """The parts of one run of a worker, wired together: each is handed the few
    collaborators it needs, never the worker. Built afresh for every run."""

    def __init__(self, w: Worker) -> None:
        broker, keys, leases, outage = w._broker, w._keys, w._leases, w._outage
        # Cancelled by stop(): ends a wait for the server at start.
        self.start_scope = anyio.CancelScope()
        self.held = held = Held()
        slots = Slots(w.concurrency)
        self.handoff = handoff = Handoff()
        audit = LeaseAudit(broker, keys, leases, held, outage)
        self.lease = lease = LeaseKeeper(
            broker, w.id, keys, leases, weights=w.queues, concurrency=w.concurrency,
            lease_ttl=w.lease_ttl, held=held, audit=audit, outage=outage,
        )  # fmt: skip
        self.forwarder = forwarder = Forwarder(broker, keys, outage)
        self.flows = flows = FlowPump(broker, list(keys), outage)
        janitor = Janitor(broker, keys, max_archived=w.max_archived, archive_ttl=w.archive_ttl)
        self.reaper = Reaper(
            broker, keys, lease_ttl=w.lease_ttl, janitor=janitor, outage=outage,
            flow_ends=flows.ended,
        )  # fmt: skip
        self.listener = listener = CancelListener(
            broker, w.queues, cancel=held.cancel, wake_forwarder=forwarder.wake, outage=outage
        )
        limits = w.mux.limits()
        declarations = {
            q: scripts.declare(queue_keys(broker.prefix, q), _encoded(d))
            for q, d in limits.items()
        }  # fmt: skip
        reaper = self.reaper

        async def succeed() -> None:
            """End the leases of dead predecessors and reap them now."""
            if await take_over(broker, w.id, keys, own_id_given=w._id_given):
                await reaper.reap()

        self.boot = boot = Boot(
            broker, w.queues, renew=lease.renew, listener=listener, outage=outage,
            declarations=declarations, limited=[q for q, d in limits.items() if d],
            take_over=succeed,
        )  # fmt: skip
        lease.redeclare = boot.declare
        self.dispatcher = dispatcher = Dispatcher(
            broker, keys, leases, w.id, w.queues, strict_priority=w.strict_priority,
            batch_size=w.batch_size, slots=slots, held=held, handoff=handoff, audit=audit,
            outage=outage, lease=lease,
        )  # fmt: skip
        self.outcomes = outcomes = Outcomes(
            broker, keys, leases, held=held, slots=slots, audit=audit, outage=outage,
            lease=lease, claims=dispatcher, wake_forwarder=forwarder.wake,
            flow_ends=flows.ended,
        )  # fmt: skip
        self.processor = Processor(handoff, w._runner, broker, keys, outcomes.record)


def handler_queues(mux: Mux) -> set[str]:
    """The queues the handlers of ``mux`` name (their ``queue`` option, else
    ``default``)."""
    entries = (mux.resolve(name) for name in mux.names)
    return {e.handler.options.get("queue") or DEFAULT_QUEUE for e in entries if e is not None}


def _weights(
    queues: Mapping[str, int | float] | Sequence[str] | None, mux: Mux
) -> dict[str, float]:
    if queues is None:
        # Every queue the handlers name, and default, each with weight 1.
        return {q: 1.0 for q in sorted(handler_queues(mux) | {DEFAULT_QUEUE})}
    if isinstance(queues, str):
        raise InvalidOption(f"queues must be a mapping of name to weight or a list, got {queues!r}")
    items = list(queues.items()) if isinstance(queues, Mapping) else [(q, 1) for q in queues]
    if not items:
        raise InvalidOption("queues must name at least one queue")
    out: dict[str, float] = {}
    for name, weight in items:
        check_queue_name(name)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise InvalidOption(f"weight of queue {name!r} must be a number > 0, got {weight!r}")
        out[name] = float(weight)
    return out
