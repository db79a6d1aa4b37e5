"""The consumer side: ``Worker`` claims tasks into its lease, runs them, writes outcomes.

Claiming has two modes. While a queue has a backlog, the worker claims batches with a
non-blocking script (up to its free slots, split across queues by weight). When every
queue came back dry, it blocks on BLMOVE, one blocking connection per queue, each
holding one reserved slot, so an idle worker wakes within milliseconds of an enqueue
without polling. Either way a claimed id sits in this worker's lease list before
anything else happens, so a crash at any point leaves it where a reaper finds it.

Successful attempts are acked in batches by one writer coroutine; a slot is freed only
once its ack is written, so the worker never holds more claimed tasks than slots.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Mapping, Sequence
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

from ._broker import DEFAULT_PREFIX, DEFAULT_URL, SCRIPTS, Broker, Call, ServerLike
from ._codec import decode_message, encode_value
from ._keys import QueueKeys, done_channel, queue_keys
from ._lease import LeaseKeeper, today
from ._mux import Mux
from ._runner import Claimed, IsFailure, OnError, Outcome, RetryDelay, Runner
from ._scheduler import Scheduler
from ._task import check_queue_name, seconds
from .errors import AqueueError, BrokerUnavailable

log = logging.getLogger("aqueue.worker")

# How long one BLMOVE blocks before the worker re-checks pauses and shutdown.
BLOCK_SECONDS = 1.0
MAX_BACKOFF = 5.0


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
        """Serve until SIGTERM/SIGINT (when run in the main thread) or cancellation."""
        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            if threading.current_thread() is threading.main_thread():
                tg.start_soon(self._watch_signals)
            try:
                await self._serve()
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

    async def _serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        if self._running:
            raise AqueueError("this Worker is already running")
        self._init_state()
        self._running = True
        try:
            await self._leases.start()
            log.info(
                "worker %s serving queues %s with concurrency %d",
                self.id,
                dict(self.queues),
                self.concurrency,
            )
            task_status.started()
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
        except anyio.get_cancelled_exc_class():
            # Cancelled from outside (e.g. run() inside a cancelled scope): no time for
            # handlers, but their tasks still go straight back to the queue.
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

    # -- claiming ----------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while not self._stopping:
            if self._suspect - self._blocking:
                await self._audit()
            if self._free <= 0:
                self._slot_waiter = anyio.Event()
                await self._slot_waiter.wait()
                continue
            if await self._claim_burst():
                continue
            await self._claim_blocking()

    async def _audit(self) -> None:
        """Return ids our lease lists hold but we do not (see orphans.lua).

        Runs from the dispatcher, between its own claims, and skips queues with a
        blocking claim in flight: an id that claim moved is not an orphan.
        """
        queues = sorted(self._suspect - self._blocking)
        calls: list[Call] = []
        for q in queues:
            k = self._keys[q]
            held = [c.id for c in self._held.values() if c.queue == q]
            calls.append((SCRIPTS.orphans, (self._lease[q], k.pending, k.states), held))
        try:
            replies = await self._broker.run(lambda: self._broker.scripts(calls))
        except BrokerUnavailable as exc:
            await self._outage(exc)
            return
        self._suspect.difference_update(queues)
        for q, n in zip(queues, replies, strict=True):
            if n:
                log.warning("returned %d orphaned task(s) of queue %s to the queue", n, q)

    def _available(self) -> list[str]:
        now = time.monotonic()
        return [q for q in self._order if self._paused_until.get(q, 0.0) <= now]

    async def _claim_burst(self) -> bool:
        """Claim without blocking until slots are full or every queue is dry."""
        dry: set[str] = set()
        claimed = False
        while not self._stopping and self._free > 0:
            plan = self._plan(min(self._free, self.batch_size), dry)
            if not plan:
                break
            got = await self._claim(plan)
            for q, asked in plan.items():
                if got.get(q, 0) < asked:
                    dry.add(q)
            claimed = claimed or sum(got.values()) > 0
        return claimed

    def _plan(self, n: int, dry: set[str] | frozenset[str] = frozenset()) -> dict[str, int]:
        """How many of ``n`` tasks to ask of each queue: by weight, or all of the
        heaviest under strict priority; nothing if every queue is paused or dry."""
        candidates = [q for q in self._available() if q not in dry]
        if not candidates or n <= 0:
            return {}
        if self.strict_priority or len(candidates) == 1:
            return {candidates[0]: n}
        weights = [self.queues[q] for q in candidates]
        return dict(Counter(random.choices(candidates, weights=weights, k=n)))

    def _claim_calls(self, plan: Mapping[str, int], moved: str = "") -> list[Call]:
        now = int(time.time() * 1000)
        calls: list[Call] = []
        for q, n in plan.items():
            k = self._keys[q]
            keys = (k.pending, self._lease[q], k.tasks, k.states, k.paused, k.leases, k.retried)
            calls.append((SCRIPTS.claim, keys, [n, self.id, self._seq, now, moved]))
            self._seq += n + 1
        return calls

    async def _claim(self, plan: Mapping[str, int], moved: str = "") -> dict[str, int]:
        """Run the claim script for each queue of ``plan`` in one round trip.

        The slots are taken before the call and the unused ones given back after, so a
        concurrent claim can never overshoot the concurrency limit.
        """
        calls = self._claim_calls(plan, moved)
        if not moved:
            self._free -= sum(plan.values())
        try:
            replies = await self._broker.run(lambda: self._broker.scripts(calls))
        except BrokerUnavailable as exc:
            self._claim_lost(plan, moved)
            await self._outage(exc)
            return {}
        self._recovered()
        return await self._claimed(plan, replies, moved)

    def _claim_lost(self, plan: Mapping[str, int], moved: str = "") -> None:
        """The claim may have run with its reply lost: audit these lease lists."""
        self._suspect.update(plan)
        self._release(sum(plan.values()) if not moved else 0)

    async def _claimed(
        self, plan: Mapping[str, int], replies: Sequence[Any], moved: str = ""
    ) -> dict[str, int]:
        """Start what the claim scripts of ``plan`` returned; give back unused slots."""
        got: dict[str, int] = {}
        lost = False
        for (q, n), reply in zip(plan.items(), replies, strict=True):
            count = 0
            if reply == -1:
                self._paused_until[q] = time.monotonic() + BLOCK_SECONDS
            elif reply == -2:
                lost = True
            else:
                for i in range(0, len(reply), 4):
                    self._start(q, reply[i : i + 4])
                    count += 1
            got[q] = count
            if not moved:
                self._release(max(0, n - count))
        if lost:
            # Our lease had expired (or the server lost its data): renew before claiming
            # again, so that everything we hold is covered by a live lease.
            await self._leases.renew()
        return got

    async def _claim_blocking(self) -> None:
        """Block on every available queue at once, one reserved slot each."""
        queues = [q for q in self._available() if q not in self._blocking]
        for q in queues[: self._free]:
            self._free -= 1
            self._blocking.add(q)
            self._blockers.start_soon(self._block_on, q)
        event = self._claim_event
        if not self._blocking:
            # Everything is paused: look again when the first pause check is due.
            wait = min(self._paused_until.values(), default=time.monotonic()) - time.monotonic()
            with anyio.move_on_after(max(wait, 0.05)):
                await event.wait()
            return
        await event.wait()

    async def _block_on(self, q: str) -> None:
        k = self._keys[q]
        got = 0
        try:
            # Not pipelined with the claim script, though that would save a round trip:
            # the script would mark the task active while a frozen worker has not read
            # the move's reply, and a reaper would then count an attempt for a task
            # that never started. Moved but unclaimed, it goes back uncounted.
            move = ("BLMOVE", k.pending, self._lease[q], "RIGHT", "LEFT", BLOCK_SECONDS)
            try:
                (moved,) = await self._broker.run(
                    lambda: self._broker.scripts([], [move]),
                    timeout=self._broker.timeout + BLOCK_SECONDS,
                )
            except BrokerUnavailable as exc:
                self._suspect.add(q)  # the move may have happened, its reply lost
                await self._outage(exc)
                moved = None
            if moved is not None:
                got = (await self._claim({q: 0}, moved=moved.decode())).get(q, 0)
        finally:
            if not got:
                self._release(1)  # the slot reserved for this blocker
            self._blocking.discard(q)
            self._claim_event.set()
            self._claim_event = anyio.Event()

    def _start(self, queue: str, item: list[Any]) -> None:
        raw_id, raw_token, message, retried = item
        max_retry, digest, body = decode_message(message)
        c = Claimed(
            queue, raw_id.decode(), raw_token.decode(), max_retry, digest, body, int(retried)
        )
        self._held[(queue, c.id)] = c
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "task %s (%s) on %s: active, attempt %d", c.id, body.type, queue, c.retried + 1
            )
        while self._idle_slots:
            slot = self._idle_slots.popleft()
            if not slot.done():
                slot.set_result(c)
                return
        self._ready.append(c)

    # -- running and recording outcomes ------------------------------------------------

    async def _run_slot(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._ready:
                c = self._ready.popleft()
            elif self._slots_closed:
                return
            else:
                slot: asyncio.Future[Claimed | None] = loop.create_future()
                self._idle_slots.append(slot)
                got = await slot
                if got is None:
                    return
                c = got
            await self._handle(c)

    def _close_slots(self) -> None:
        """Let the runners end once nothing is left to run."""
        self._slots_closed = True
        while self._idle_slots:
            slot = self._idle_slots.popleft()
            if not slot.done():
                slot.set_result(None)

    async def _handle(self, c: Claimed) -> None:
        k = self._keys[c.queue]

        async def progress(value: Any) -> None:
            data = encode_value(value)
            channel = done_channel(self._broker.prefix, c.queue)
            commands = [("HSET", k.progress, c.id, data), ("PUBLISH", channel, f"progress|{c.id}")]
            await self._broker.run(lambda: self._broker.scripts([], commands))

        outcome = await self._runner.run(c, progress)
        await self._record(c, outcome)

    async def _record(self, c: Claimed, outcome: Outcome) -> None:
        kind = outcome.kind
        if kind == "ack":
            self._acks.setdefault(c.queue, []).append((c, outcome.result))
            self._ack_event.set()
            return
        if kind == "requeue":
            self._requeue.setdefault(c.queue, []).append(c)
            self._forget(c)
            return
        if kind == "drop":
            log.warning(
                "task %s (%s) on %s: lease lost, handler cancelled; another worker owns it now",
                c.id,
                c.body.type,
                c.queue,
            )
            self._forget(c)
            # If our heartbeat renewed the lease before any reaper saw it expire, the
            # task is still in our (live) lease list: the audit gives it back.
            self._suspect.add(c.queue)
            return
        try:
            await self._write_failure(c, outcome)
        except BrokerUnavailable as exc:
            log.error(
                "task %s (%s) on %s: could not write its %s before the lease would lapse "
                "(%s); it will run again",
                c.id, c.body.type, c.queue, outcome.kind, exc,
            )  # fmt: skip
            self._suspect.add(c.queue)
        finally:
            self._forget(c)

    async def _write_failure(self, c: Claimed, o: Outcome) -> None:
        k = self._keys[c.queue]
        now = int(time.time() * 1000)
        due = now + int(o.delay * 1000)
        keys = (
            self._lease[c.queue], k.pending, k.tasks, k.states, k.retry, k.archived, k.uniq,
            k.uniq_exp, k.stats, k.retried, k.errors, k.failed_at, k.progress, k.results,
            k.cancels,
        )  # fmt: skip
        counted = "0" if o.kind in ("revoke", "again") else "1"
        args = [now, today(), c.id, c.token, o.kind, due, o.error[:4000], c.digest, counted]
        notices = []
        if o.kind in ("archive", "revoke"):
            kind = "archived" if o.kind == "archive" else "revoked"
            notices = [("PUBLISH", done_channel(self._broker.prefix, c.queue), f"{kind}|{c.id}")]
        call: Call = (SCRIPTS.fail, keys, args)
        ok = (await self._persist(lambda: self._broker.scripts([call], notices)))[0]
        if not ok:
            log.warning(
                "task %s (%s) on %s: late %s discarded, the task is no longer ours",
                c.id, c.body.type, c.queue, o.kind,
            )  # fmt: skip
            return
        if o.kind == "revoke":
            log.info("task %s (%s) on %s: revoked", c.id, c.body.type, c.queue)
            return
        attempt = c.retried + 1
        where = "archived" if o.kind == "archive" else f"retry in {o.delay:.3g} s"
        log.warning(
            "task %s (%s) on %s failed, attempt %d of %d, %s: %s",
            c.id, c.body.type, c.queue, attempt, c.max_retry + 1, where, o.error,
        )  # fmt: skip
        if o.kind in ("retry", "again"):
            self._leases.wake_forwarder(due)

    def _forget(self, c: Claimed, slots: int = 1) -> None:
        self._held.pop((c.queue, c.id), None)
        self._release(slots)
        if not self._held and self._idle_waiter is not None:
            self._idle_waiter.set()
            self._idle_waiter = None

    async def _ack_loop(self) -> None:
        while True:
            event = self._ack_event
            if not self._acks:
                await event.wait()
            self._ack_event = anyio.Event()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        batch, self._acks = self._acks, {}
        if not batch:
            return
        now = int(time.time() * 1000)
        day = today()
        calls: list[Call] = []
        for q, items in batch.items():
            k = self._keys[q]
            keys = (
                self._lease[q], k.tasks, k.states, k.completed, k.results, k.uniq, k.uniq_exp,
                k.stats, k.retried, k.errors, k.failed_at, k.progress, k.cancels,
            )  # fmt: skip
            plain: list[Any] = []
            full: list[Any] = []
            for c, result in items:
                if c.body.retention > 0 or c.digest:
                    full += [c.id, c.token, int(c.body.retention * 1000), result, c.digest]
                else:
                    plain += [c.id, c.token]
            calls.append((SCRIPTS.ack, keys, [now, day, len(plain) // 2, *plain, *full]))
        # Waiting Client.result calls hear of kept results in the same round trip.
        notices = [
            ("PUBLISH", done_channel(self._broker.prefix, q), "completed|" + ",".join(ids))
            for q, items in batch.items()
            if (ids := [c.id for c, _ in items if c.body.retention > 0])
        ]
        # A busy worker claims the tasks that take the acked tasks' slots in the same
        # round trip: the server runs the claims after the acks, so the worker never
        # holds more tasks than slots, and a claim costs no round trip of its own.
        plan: dict[str, int] = {}
        if self._slot_waiter is not None and not self._stopping and not self._suspect:
            plan = self._plan(min(sum(len(v) for v in batch.values()), self.batch_size))
        claims = self._claim_calls(plan)
        self._free -= sum(plan.values())
        unsent = claims

        def write() -> Awaitable[list[Any]]:
            # Only the first attempt carries the claims: after a failure they may have
            # run with their reply lost, and the audit sorts that out instead.
            nonlocal unsent
            sending, unsent = unsent, []
            return self._broker.scripts([*calls, *sending], notices)

        try:
            replies = await self._persist(write)
        except BrokerUnavailable as exc:
            log.error(
                "could not write %d ack(s) before the lease expired (%s); those tasks will "
                "run again once the reaper returns them",
                sum(len(v) for v in batch.values()),
                exc,
            )
            replies = [[] for _ in batch]
            self._suspect.update(batch)
        claimed = len(replies) == len(calls) + len(claims) + len(notices) and bool(claims)
        claim_replies = replies[len(calls) : len(calls) + len(claims)]
        replies = replies[: len(calls)]
        for (q, items), stale in zip(batch.items(), replies, strict=True):
            for sid in stale:
                log.warning(
                    "task %s on %s: late ack discarded, the task is no longer ours", sid.decode(), q
                )
            debug = log.isEnabledFor(logging.DEBUG)
            for c, _ in items:
                if debug:
                    log.debug("task %s (%s) on %s: completed", c.id, c.body.type, q)
                self._forget(c, slots=0)
            self._release(len(items))
        if claimed:
            self._recovered()
            await self._claimed(plan, claim_replies)
        elif plan:
            self._claim_lost(plan)

    async def _persist(self, fn: Any) -> Any:
        """Write an outcome, retrying connection failures with backoff for as long as
        the lease is still ours; after that the reaper owns the task."""
        delay = 0.05
        while True:
            try:
                result = await self._broker.run(fn)
                self._recovered()
                return result
            except BrokerUnavailable as exc:
                left = self._leases.valid_until - time.monotonic()
                if left <= 0:
                    raise
                # The last try comes just before the lease would lapse, not up to a
                # whole backoff step earlier.
                await self._outage(exc, sleep=min(delay, left))
                delay = min(delay * 2, MAX_BACKOFF)

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
