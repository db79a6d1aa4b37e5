"""Prometheus metrics (the ``aqueue[prometheus]`` extra).

Two sources, because they answer different questions:

* ``TaskMetrics`` is a middleware. It counts what *this process* ran, per queue and
  task type: attempts processed, failed, retried, archived and revoked, how long they
  took, and how many run now. Add it to the mux of every worker:
  ``mux.use(TaskMetrics())``.
* ``QueueCollector`` reports what the *server* holds, per queue: tasks per state,
  whether the queue is paused, its latency, and the server's own processed/failed
  totals, read with ``Inspector.queue_info``. Every process would report the same
  numbers, so run it in one place: ``aqueue metrics --port 9808``, or one application.

Prometheus collects synchronously, from the exporter's thread, while the server is
read with async calls. The collector therefore never reads the server during a scrape:
an async task in your event loop refreshes a snapshot every ``interval`` seconds
(``async with collector:``) and a scrape reports that snapshot. Scrapes are instant,
and any number of them cost the server nothing.

Expose a registry with ``Exporter`` (an HTTP server on its own thread), mount
``asgi_app(registry)`` in an ASGI application, or run ``serve(url, port)``, the
blocking exporter behind ``aqueue metrics``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from types import TracebackType
from typing import Any
from wsgiref.simple_server import WSGIServer

import anyio
import anyio.abc

try:
    import prometheus_client
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import REGISTRY, CollectorRegistry
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "aqueue.metrics needs prometheus-client: pip install 'aqueue[prometheus]'"
    ) from exc

from ._inspector import Inspector
from ._mux import Context
from ._redis.broker import DEFAULT_PREFIX, DEFAULT_URL, ServerLike, redacted
from ._task import QueueInfo, State, check_queue_name, seconds
from .errors import AqueueError, BrokerUnavailable, QueueNotFound, Retry, Revoke, SkipRetry

__all__ = [
    "DEFAULT_PORT",
    "DURATION_BUCKETS",
    "Exporter",
    "QueueCollector",
    "TaskMetrics",
    "asgi_app",
    "serve",
]

log = logging.getLogger("aqueue.metrics")

DEFAULT_PORT = 9808
# From 5 ms to the default task timeout of 30 minutes.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    1800.0,
)  # fmt: skip

IsFailure = Callable[[BaseException], bool]
CallNext = Callable[[], Awaitable[Any]]


# -- per task type: the middleware ----------------------------------------------------


class _Series:
    """The labelled children of one (queue, task type), looked up once."""

    __slots__ = ("archived", "duration", "failed", "in_flight", "processed", "retried", "revoked")

    def __init__(self, m: TaskMetrics, queue: str, task_type: str) -> None:
        # Every series exists from the first attempt on, at 0 if nothing happened yet,
        # so that rate() and absence alerts work from the start.
        self.processed = m.processed.labels(queue, task_type)
        self.failed = m.failed.labels(queue, task_type)
        self.retried = m.retried.labels(queue, task_type)
        self.archived = m.archived.labels(queue, task_type)
        self.revoked = m.revoked.labels(queue, task_type)
        self.duration = m.duration.labels(queue, task_type)
        self.in_flight = m.in_flight.labels(queue, task_type)


class TaskMetrics:
    """Middleware that counts the attempts it sees, labelled by ``queue`` and ``task_type``.

    ==================================  =========  ==========================================
    ``aqueue_tasks_processed_total``    counter    attempts that finished, succeeded or failed
    ``aqueue_tasks_failed_total``       counter    attempts that failed (raised, timed out)
    ``aqueue_tasks_retried_total``      counter    failed attempts whose task will run again
    ``aqueue_tasks_archived_total``     counter    failed attempts whose task was archived
    ``aqueue_tasks_revoked_total``      counter    attempts that raised ``Revoke``
    ``aqueue_task_duration_seconds``    histogram  how long each attempt ran, any outcome
    ``aqueue_tasks_in_flight``          gauge      attempts running now
    ==================================  =========  ==========================================

    ``processed`` and ``failed`` count what the server's queue statistics count, so
    their sums over task types match ``QueueInfo.processed_total``/``failed_total`` for
    the attempts that reached the middleware. Attempts that never reach it are not
    seen: unknown task types, payloads that do not decode, deadlines that passed
    before the start, and tasks recovered from a dead worker (see the queue gauges of
    ``QueueCollector`` for those). An attempt interrupted by a graceful shutdown or a
    lost lease is not counted (it is not an attempt), nor is one cancelled by
    ``Inspector.cancel``, which the middleware cannot tell from a shutdown.

    Pass the worker's ``is_failure`` here too if it has one: an error it does not call
    a failure is retried without counting an attempt, as the worker does.

    Create one per registry (the metric names are registered once); add it first with
    ``mux.use`` so that it times the other middleware too.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        buckets: Sequence[float] = DURATION_BUCKETS,
        is_failure: IsFailure | None = None,
    ) -> None:
        labels = ("queue", "task_type")
        self.is_failure = is_failure
        self.processed = Counter(
            "aqueue_tasks_processed_total",
            "Task attempts that finished, succeeded or failed.",
            labels,
            registry=registry,
        )
        self.failed = Counter(
            "aqueue_tasks_failed_total",
            "Task attempts that failed: the handler raised or timed out.",
            labels,
            registry=registry,
        )
        self.retried = Counter(
            "aqueue_tasks_retried_total",
            "Failed task attempts whose task will run again.",
            labels,
            registry=registry,
        )
        self.archived = Counter(
            "aqueue_tasks_archived_total",
            "Failed task attempts whose task was archived (retries spent or SkipRetry).",
            labels,
            registry=registry,
        )
        self.revoked = Counter(
            "aqueue_tasks_revoked_total",
            "Task attempts that raised Revoke: the task was dropped.",
            labels,
            registry=registry,
        )
        self.duration = Histogram(
            "aqueue_task_duration_seconds",
            "How long task attempts ran, whatever their outcome.",
            labels,
            registry=registry,
            buckets=buckets,
        )
        self.in_flight = Gauge(
            "aqueue_tasks_in_flight",
            "Task attempts running now.",
            labels,
            registry=registry,
        )
        self._series: dict[tuple[str, str], _Series] = {}

    def _get(self, queue: str, task_type: str) -> _Series:
        s = self._series.get((queue, task_type))
        if s is None:
            s = self._series[(queue, task_type)] = _Series(self, queue, task_type)
        return s

    async def __call__(self, ctx: Context, call_next: CallNext) -> Any:
        s = self._get(ctx.queue, ctx.task_type)
        started, started_wall = time.monotonic(), time.time()
        s.in_flight.inc()
        try:
            result = await call_next()
        except anyio.get_cancelled_exc_class():
            # The worker cancels the handler at its timeout, and also at a shutdown, a
            # lost lease or a cancel request: only the first is an attempt that failed.
            # Counted, never swallowed: the worker needs the cancellation.
            if _timed_out(ctx, started, started_wall):
                self._failed(s, ctx, TimeoutError("the task timed out"), started)
            raise
        except Exception as exc:
            self._failed(s, ctx, exc, started)
            raise
        finally:
            s.in_flight.dec()
        s.duration.observe(time.monotonic() - started)
        s.processed.inc()
        return result

    def _failed(self, s: _Series, ctx: Context, exc: BaseException, started: float) -> None:
        """Classify a failed attempt as the worker's runner does."""
        s.duration.observe(time.monotonic() - started)
        if isinstance(exc, Revoke):
            s.revoked.inc()
            return
        if isinstance(exc, SkipRetry):
            archived = True
        elif not isinstance(exc, Retry) and not self._is_failure(exc):
            s.retried.inc()  # tried again without spending a retry, as the worker does
            return
        else:
            archived = ctx.retry_count >= ctx.max_retry
        s.processed.inc()
        s.failed.inc()
        (s.archived if archived else s.retried).inc()

    def _is_failure(self, exc: BaseException) -> bool:
        if self.is_failure is None:
            return True
        try:
            return bool(self.is_failure(exc))
        except Exception:
            return True  # as the worker does


def _timed_out(ctx: Context, started: float, started_wall: float) -> bool:
    """Whether a cancellation arriving now is the worker's timeout, for an attempt that
    started at ``time.monotonic()`` ``started`` and ``time.time()`` ``started_wall``.

    The worker cancels at ``ctx.deadline``, computed (wall clock, rounded down to the
    millisecond) from the same instant as its cancel scope (monotonic clock) just
    before the attempt started. So the time left at the start, run down on the
    monotonic clock, never outlasts the scope: a cancellation after it is the timeout;
    shutdowns, lost leases and cancel requests come earlier. Comparing elapsed times
    keeps wall clock adjustments out, and reading ``ctx.deadline`` only here keeps its
    datetime off the path of attempts that are not cancelled.
    """
    deadline = ctx.deadline
    if deadline is None:
        return False
    return time.monotonic() - started >= deadline.timestamp() - started_wall


# -- per queue: the collector ---------------------------------------------------------


class _Snapshot:
    __slots__ = ("at", "infos", "up")

    def __init__(self, at: float, up: bool, infos: tuple[QueueInfo, ...]) -> None:
        self.at, self.up, self.infos = at, up, infos


_STATES = tuple(s.value for s in State)


class QueueCollector:
    """Per queue gauges from the server, refreshed in the background.

    ==================================  =======  =============================================
    ``aqueue_queue_tasks``              gauge    tasks per ``queue`` and ``state``
    ``aqueue_queue_paused``             gauge    1 while the queue is paused
    ``aqueue_queue_latency_seconds``    gauge    age of the oldest pending task (0 if none)
    ``aqueue_queue_memory_bytes``       gauge    the server's memory estimate for the queue
    ``aqueue_queue_processed_total``    counter  attempts finished, by every worker (server)
    ``aqueue_queue_failed_total``       counter  attempts failed, by every worker (server)
    ``aqueue_collector_up``             gauge    1 if the last refresh read the server
    ``aqueue_collector_last_refresh_timestamp_seconds``  gauge  when it last did
    ==================================  =======  =============================================

    ``async with collector:`` takes a first snapshot, then refreshes one every
    ``interval`` seconds until the block exits; or run ``collector.run()`` in a task
    group of your own, or call ``await collector.refresh()`` yourself. A scrape reports
    the last snapshot and never waits for the server; when a refresh fails, the queue
    series disappear and ``aqueue_collector_up`` is 0 until the server answers again.

    ``queues=None`` reports every queue the server knows (``Inspector.queues``); a
    queue you name that has seen no task yet reports zeros.
    """

    def __init__(
        self,
        url_or_redis: ServerLike = DEFAULT_URL,
        *,
        queues: Sequence[str] | None = None,
        interval: float = 5.0,
        registry: CollectorRegistry | None = REGISTRY,
        timeout: float = 5.0,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        # registry=None: registered nowhere (register it yourself).
        if isinstance(queues, str):
            raise AqueueError(f"queues must be a list of queue names, got {queues!r}")
        self.queues = [check_queue_name(q) for q in queues] if queues is not None else None
        self.interval = seconds(interval, "interval", allow_zero=False)
        self.inspector = Inspector(url_or_redis, timeout=timeout, prefix=prefix)
        self._snapshot: _Snapshot | None = None
        self._failing = False
        self._tg: anyio.abc.TaskGroup | None = None
        if registry is not None:
            registry.register(self)

    # -- reading the server (on the event loop) --------------------------------------

    async def refresh(self) -> None:
        """Read every queue now and replace the snapshot; never raises for a server
        that is down (the snapshot then says so)."""
        try:
            infos = await self._queue_infos()
        except Exception as exc:
            if not self._failing:
                # A server that is down is expected; anything else gets its traceback.
                trace = not isinstance(exc, BrokerUnavailable)
                log.warning("cannot read the queues for metrics: %s", exc, exc_info=trace)
            self._failing = True
            self._snapshot = _Snapshot(self._last_success(), False, ())
            return
        if self._failing:
            log.warning("reading the queues for metrics again")
        self._failing = False
        # One reference assignment: a scrape on another thread sees the old or the new.
        self._snapshot = _Snapshot(time.time(), True, infos)

    def _last_success(self) -> float:
        return self._snapshot.at if self._snapshot is not None else 0.0

    async def _queue_infos(self) -> tuple[QueueInfo, ...]:
        explicit = self.queues is not None
        names = self.queues if self.queues is not None else await self.inspector.queues()
        infos = []
        for q in names:
            try:
                infos.append(await self.inspector.queue_info(q))
            except QueueNotFound:
                # A queue you asked for that has seen no task yet holds nothing; one
                # deleted since it was listed is gone.
                if explicit:
                    infos.append(QueueInfo(queue=q))
        return tuple(infos)

    async def run(self) -> None:
        """Refresh every ``interval`` seconds until cancelled."""
        while True:
            await self.refresh()
            await anyio.sleep(self.interval)

    async def _refresh_later(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            await self.refresh()

    async def __aenter__(self) -> QueueCollector:
        if self._tg is not None:
            raise AqueueError("this QueueCollector is already running")
        await self.refresh()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._refresh_later)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg = self._tg, None
        assert tg is not None
        tg.cancel_scope.cancel()
        try:
            await tg.__aexit__(None, None, None)
        finally:
            await self.inspector.close()

    # -- reporting (on the scraping thread) -------------------------------------------

    def describe(self) -> Iterator[Metric]:
        """The families this collector reports, without samples (for the registry)."""
        yield from _Families().all()

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot
        f = _Families()
        f.up.add_metric([], 1.0 if snap is not None and snap.up else 0.0)
        if snap is not None:
            if snap.at:
                f.refreshed.add_metric([], snap.at)
            for info in snap.infos:
                q = info.queue
                for state in _STATES:
                    f.tasks.add_metric([q, state], float(getattr(info, state)))
                f.paused.add_metric([q], 1.0 if info.paused else 0.0)
                f.latency.add_metric([q], info.latency)
                f.memory.add_metric([q], float(info.memory_bytes))
                f.processed.add_metric([q], float(info.processed_total))
                f.failed.add_metric([q], float(info.failed_total))
        yield from f.all()


class _Families:
    """The (empty) metric families of one ``QueueCollector`` report."""

    def __init__(self) -> None:
        q = ["queue"]
        self.tasks = GaugeMetricFamily(
            "aqueue_queue_tasks", "Tasks in the queue, per state.", labels=["queue", "state"]
        )
        self.paused = GaugeMetricFamily(
            "aqueue_queue_paused", "1 while the queue is paused.", labels=q
        )
        self.latency = GaugeMetricFamily(
            "aqueue_queue_latency_seconds",
            "Seconds since the oldest pending task was enqueued (0 when none is pending).",
            labels=q,
        )
        self.memory = GaugeMetricFamily(
            "aqueue_queue_memory_bytes", "The server's memory estimate for the queue.", labels=q
        )
        self.processed = CounterMetricFamily(
            "aqueue_queue_processed",
            "Task attempts finished in the queue, by every worker (the server's count).",
            labels=q,
        )
        self.failed = CounterMetricFamily(
            "aqueue_queue_failed",
            "Task attempts failed in the queue, by every worker (the server's count).",
            labels=q,
        )
        self.up = GaugeMetricFamily(
            "aqueue_collector_up", "1 if the last refresh of the queue metrics read the server."
        )
        self.refreshed = GaugeMetricFamily(
            "aqueue_collector_last_refresh_timestamp_seconds",
            "When the queue metrics last read the server (Unix time).",
        )

    def all(self) -> tuple[Metric, ...]:
        return (
            self.tasks, self.paused, self.latency, self.memory, self.processed, self.failed,
            self.up, self.refreshed,
        )  # fmt: skip


# -- exposition -----------------------------------------------------------------------


def asgi_app(registry: CollectorRegistry = REGISTRY) -> Callable[..., Awaitable[None]]:
    """An ASGI application serving ``registry`` in the Prometheus text format, to mount
    in your application (e.g. ``app.mount("/metrics", asgi_app(registry))``)."""
    app: Callable[..., Awaitable[None]] = prometheus_client.make_asgi_app(registry)
    return app


class Exporter:
    """Serves ``registry`` at ``http://host:port/metrics`` from a thread of its own.

    ``port=0`` picks a free port (read it back from ``.port``). Use as a context
    manager, or call ``start()`` and ``stop()``; stopping waits for the server thread,
    up to half a second.
    """

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        *,
        port: int = DEFAULT_PORT,
        host: str = "127.0.0.1",
    ) -> None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise AqueueError(f"port must be an int from 0 to 65535, got {port!r}")
        self.registry = registry
        self.host = host
        self._port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the free one chosen for ``port=0`` once started)."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> Exporter:
        if self._server is not None:
            raise AqueueError(f"the exporter on {self.url} is already running")
        try:
            self._server, self._thread = prometheus_client.start_http_server(
                self._port, self.host, self.registry
            )
        except OSError as exc:
            raise AqueueError(f"cannot serve metrics on {self.host}:{self._port}: {exc}") from exc
        return self

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> Exporter:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve(
    url: str,
    port: int = DEFAULT_PORT,
    host: str = "127.0.0.1",
    *,
    queues: Sequence[str] | None = None,
    interval: float = 5.0,
    timeout: float = 5.0,
) -> None:
    """Export the queue gauges of the server at ``url`` on ``http://host:port/metrics``
    until SIGTERM or SIGINT (what ``aqueue metrics`` runs).

    Blocks, running its own event loop. A server that is down does not stop it: it
    reports ``aqueue_collector_up 0`` until the server answers. Raises ``AqueueError``
    for a bad argument before anything starts, and when the port cannot be listened on.
    """
    registry = CollectorRegistry()
    collector = QueueCollector(
        url, queues=queues, interval=interval, registry=registry, timeout=timeout
    )
    exporter = Exporter(registry, port=port, host=host)
    anyio.run(_serve, collector, exporter)


async def _serve(collector: QueueCollector, exporter: Exporter) -> None:
    with exporter:
        log.info(
            "serving the queue metrics of %s at %s",
            redacted(collector.inspector.broker.url),
            exporter.url,
        )
        async with collector:
            await _until_signal()
    log.info("metrics exporter stopped")


async def _until_signal() -> None:
    if threading.current_thread() is not threading.main_thread():
        await anyio.sleep_forever()  # signals reach the main thread only
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s: stopping", signal.Signals(signum).name)
            return
