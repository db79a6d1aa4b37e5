"""The consumer side: ``Worker`` claims tasks into its lease, runs them, writes outcomes.

This module holds the public class and its lifecycle (start, serve, graceful shutdown,
signals). The parts build on one another: ``_state`` (shared state, slots),
``_claims`` (claiming), ``_outcomes`` (running handlers, acks and failures). Every part
reports its server calls to one ``Outage`` (``_outage``: backoff and log policy).
"""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

from .._mux import Mux
from .._redis.broker import DEFAULT_PREFIX, DEFAULT_URL, SCRIPTS, Broker, Call, ServerLike
from .._redis.keys import QueueKeys, queue_keys
from .._task import check_queue_name, seconds
from ..errors import AqueueError, BrokerUnavailable
from .lease import LeaseKeeper
from .outage import Outage
from .outcomes import Running
from .runner import IsFailure, OnError, RetryDelay, Runner
from .scheduler import Scheduler
from .state import BLOCK_SECONDS, log


class Worker(Running):
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
    ) -> None:
        if not isinstance(mux, Mux):
            raise AqueueError(f"Worker needs a Mux, got {mux!r}")
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise AqueueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise AqueueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.mux = mux
        self.url_or_redis = url_or_redis
        self.options: dict[str, Any] = {
            "concurrency": concurrency, "queues": queues, "strict_priority": strict_priority,
            "shutdown_timeout": shutdown_timeout, "lease_ttl": lease_ttl,
            "retry_delay": retry_delay, "is_failure": is_failure, "on_error": on_error,
            "scheduler": scheduler, "timeout": timeout, "batch_size": batch_size,
            "max_archived": max_archived, "archive_ttl": archive_ttl, "prefix": prefix,
        }  # fmt: skip
        self.queues = _weights(queues)
        self.concurrency = concurrency
        self.strict_priority = strict_priority
        self.shutdown_timeout = seconds(shutdown_timeout, "shutdown_timeout")
        self.lease_ttl = seconds(lease_ttl, "lease_ttl", allow_zero=False)
        self.scheduler = scheduler
        self.batch_size = batch_size
        if not isinstance(max_archived, int) or max_archived < 0:
            raise AqueueError(f"max_archived must be an int >= 0, got {max_archived!r}")
        self.max_archived = max_archived
        self.archive_ttl = seconds(archive_ttl, "archive_ttl")
        self.id = uuid.uuid4().hex[:16]
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
        self._lease: dict[str, str] = {q: k.lease(self.id) for q, k in self._keys.items()}
        # Claim order for blocking and strict priority: heaviest first.
        self._order = sorted(self.queues, key=lambda q: -self.queues[q])
        self._runner = Runner(
            mux,
            retry_delay=retry_delay,
            is_failure=is_failure,
            on_error=on_error,
            limiter=anyio.CapacityLimiter(concurrency),
        )
        self._leases = LeaseKeeper(self)
        self._outage = Outage(log)
        self._outer: anyio.abc.TaskGroup | None = None
        self._running = False

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
        if self._running:
            self._start_scope.cancel()
            self._claim_scope.cancel()
            self._wake_dispatcher()

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
        self._init_state()
        self._running = True
        try:
            if not await self._begin(wait):
                return
            task_status.started()
            try:
                await self._serve_started()
            except anyio.get_cancelled_exc_class():
                # Cancelled from outside (e.g. run() inside a cancelled scope): no time
                # for handlers, but their tasks still go straight back to the queue.
                for c in self._held.values():
                    self._requeue.setdefault(c.queue, []).append(c)
                self._held.clear()
                await self._finish()
                raise
        finally:
            self._running = False
            with anyio.CancelScope(shield=True):
                await self._broker.close()
        log.info("worker %s stopped", self.id)

    async def _begin(self, wait: bool) -> bool:
        """First contact (``LeaseKeeper.start``); False if ``stop()`` came first."""
        with self._start_scope:
            await self._leases.start(wait)
            log.info(
                "worker %s serving queues %s with concurrency %d",
                self.id,
                dict(self.queues),
                self.concurrency,
            )
            return True
        log.info("worker %s stopped before its server answered", self.id)
        return False

    async def _serve_started(self) -> None:
        async with anyio.create_task_group() as background:
            background.start_soon(self._leases.heartbeat_loop)
            background.start_soon(self._leases.reaper_loop)
            background.start_soon(self._leases.forward_loop)
            background.start_soon(self._ack_loop)
            background.start_soon(self._leases.cancel_loop)
            if self.scheduler and self.mux.cron_entries:
                background.start_soon(Scheduler(self).run)
            # One long-lived runner per slot, handed claimed tasks directly:
            # spawning a task per handler costs more than a no-op handler itself.
            async with anyio.create_task_group() as handlers:
                for _ in range(self.concurrency):
                    handlers.start_soon(self._run_slot)
                try:
                    with self._claim_scope:
                        async with anyio.create_task_group() as blockers:
                            self._blockers = blockers
                            await self._dispatch()
                    await self._drain()
                finally:
                    self._close_slots()
            await self._finish()
            background.cancel_scope.cancel()

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if self._stopping:
                    log.warning("second signal: cancelling running handlers now")
                    self.shutdown_timeout = 0
                    self._cancel_all("shutdown")
                else:
                    log.info("received %s: shutting down gracefully", signal.Signals(signum).name)
                    self.stop()

    async def _drain(self) -> None:
        """Give running handlers ``shutdown_timeout``, then cancel the rest."""
        if self._held:
            with anyio.move_on_after(self.shutdown_timeout):
                while self._held:
                    self._idle_waiter = anyio.Event()
                    await self._idle_waiter.wait()
            self._cancel_all("shutdown")

    async def _finish(self) -> None:
        """Write the last acks, put shutdown-cancelled tasks back at the head of their
        queues, and release the lease. Shielded: an outer cancellation must not lose
        these writes (bounded by the broker timeout instead)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._broker.timeout * 2):
            try:
                await self._flush_acks()
                calls: list[Call] = []
                for q, k in self._keys.items():
                    args: list[Any] = [1, self.id]
                    for c in self._requeue.get(q, []):
                        args += [c.id, c.token]
                    calls.append(
                        (SCRIPTS.requeue, (self._lease[q], k.pending, k.states, k.leases), args)
                    )
                replies = await self._broker.run(lambda: self._broker.scripts(calls))
                await self._leases.unregister()
                back = sum(int(r) for r in replies)
                if back:
                    log.info("returned %d unfinished task(s) to their queues", back)
            except BrokerUnavailable as exc:
                log.warning(
                    "could not release the lease at shutdown (%s); the reaper will return "
                    "its tasks after lease_ttl",
                    exc,
                )

    def _cancel_all(self, reason: str) -> None:
        for c in list(self._held.values()):
            c.cancel(reason)

    def cancel_held(self, queue: str, task_id: str) -> bool:
        """Cancel the handler of a task this worker runs, if it runs it."""
        c = self._held.get((queue, task_id))
        if c is None:
            return False
        log.info("task %s (%s) on %s: cancel requested", c.id, c.body.type, queue)
        c.cancel("cancel")
        return True

    def _cancel_queue(self, queue: str, reason: str) -> int:
        held = [c for c in self._held.values() if c.queue == queue]
        for c in held:
            c.cancel(reason)
        return len(held)


def _weights(queues: Mapping[str, int | float] | Sequence[str] | None) -> dict[str, float]:
    if queues is None:
        return {"default": 1.0}
    if isinstance(queues, str):
        raise AqueueError(f"queues must be a mapping of name to weight or a list, got {queues!r}")
    items = list(queues.items()) if isinstance(queues, Mapping) else [(q, 1) for q in queues]
    if not items:
        raise AqueueError("queues must name at least one queue")
    out: dict[str, float] = {}
    for name, weight in items:
        check_queue_name(name)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise AqueueError(f"weight of queue {name!r} must be a number > 0, got {weight!r}")
        out[name] = float(weight)
    return out
