"""``QueueCollector``: what the server holds per queue, how busy each declared limit
is, and how many workflows started and ended, as Prometheus metrics, read in the
background so that a scrape never waits for the server."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from types import TracebackType

import anyio
import anyio.abc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, CollectorRegistry

from .. import _minutes as minutes
from .._inspector import Inspector
from .._limits import LimitInfo
from .._reads import text
from .._redis.broker import DEFAULT_PREFIX, DEFAULT_URL, ServerLike
from .._redis.keys import flow_stats_key
from .._task import QueueInfo, State, check_queue_name, seconds
from ..errors import AqueueError, BrokerUnavailable, InvalidOption, QueueNotFound

log = logging.getLogger("aqueue.metrics")


class _Snapshot:
    __slots__ = ("at", "flows", "infos", "limits", "up")

    def __init__(
        self,
        at: float,
        up: bool,
        infos: tuple[QueueInfo, ...],
        limits: tuple[LimitInfo, ...] = (),
        flows: dict[str, int] | None = None,
    ) -> None:
        self.at, self.up, self.infos, self.limits = at, up, infos, limits
        self.flows = flows


_STATES = tuple(s.value for s in State)
# The fields of the flow counters' hash (``flow_stats_key``): flows started, and ended
# per final state.
_FLOW_COUNTS = ("started", "completed", "failed", "cancelled")


class QueueCollector:
    """Per queue and per limit gauges from the server, refreshed in the background.

    ==================================  =======  =============================================
    ``aqueue_queue_tasks``              gauge    tasks per ``queue`` and ``state``
    ``aqueue_queue_paused``             gauge    1 while the queue is paused
    ``aqueue_queue_latency_seconds``    gauge    age of the oldest pending task (0 if none)
    ``aqueue_queue_memory_bytes``       gauge    the server's memory estimate for the queue
    ``aqueue_queue_processed_total``    counter  attempts finished, by every worker (server)
    ``aqueue_queue_failed_total``       counter  attempts failed, by every worker (server)
    ``aqueue_limit_running``            gauge    concurrency slots taken now, per ``queue``
                                                 and ``task_type`` ("" for a queue's limit)
    ``aqueue_limit_concurrency``        gauge    the concurrency limit (per limit key)
    ``aqueue_limit_rate``               gauge    task starts the rate limit allows a second
    ``aqueue_limit_held_back_total``    counter  claims the limit held back (every worker)
    ``aqueue_flows_total``              counter  workflows per ``state``: ``started``, and
                                                 ended ``completed``, ``failed``,
                                                 ``cancelled``
    ``aqueue_collector_up``             gauge    1 if the last refresh read the server
    ``aqueue_collector_last_refresh_timestamp_seconds``  gauge  when it last did
    ==================================  =======  =============================================

    The limit series (``Inspector.limits``) exist for the declared limits only:
    ``aqueue_limit_running`` and ``aqueue_limit_concurrency`` for those with a
    concurrency limit (a rate limit takes no slots), ``aqueue_limit_rate`` for those with
    a rate limit. They are read in the same refresh as the queues; when that read
    fails, they disappear from the report while the queue series stay. So does
    ``aqueue_flows_total`` (the server's counts, over every queue, whatever ``queues``
    names), whose four series are there, 0 included, whenever they were read.

    ``async with collector:`` takes a first snapshot, then refreshes one every
    ``interval`` seconds until the block exits; or run ``collector.run()`` in a task
    group of your own, or call ``await collector.refresh()`` yourself. A scrape reports
    the last snapshot and never waits for the server; when a refresh fails, the queue
    series disappear and ``aqueue_collector_up`` is 0 until the server answers again.

    ``queues=None`` reports every queue the server knows (``Inspector.queues``); a
    queue you name that has seen no task yet reports zeros.

    Each refresh also keeps a sample of each queue for the dashboard's per-minute
    chart (``aqueue/_minutes.py``: one small hash per queue, written best effort).
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
            raise InvalidOption(f"queues must be a list of queue names, got {queues!r}")
        self.queues = [check_queue_name(q) for q in queues] if queues is not None else None
        self.interval = seconds(interval, "interval", allow_zero=False)
        self.inspector = Inspector(url_or_redis, timeout=timeout, prefix=prefix)
        self._snapshot: _Snapshot | None = None
        self._failing = False
        self._limits_failing = False
        self._flows_failing = False
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
        limits = await self._limits()
        flows = await self._flow_counts()
        # One reference assignment: a scrape on another thread sees the old or the new.
        self._snapshot = _Snapshot(time.time(), True, infos, limits, flows)
        # Feeds the dashboard's per-minute chart (aqueue/_minutes.py); best effort.
        await minutes.record(self.inspector.broker, infos)

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

    async def _limits(self) -> tuple[LimitInfo, ...]:
        """The declared limits of the queues reported; none when they cannot be read
        (the queue metrics do not depend on them)."""
        try:
            limits = await self.inspector.limits()
        except Exception as exc:
            if not self._limits_failing:
                trace = not isinstance(exc, BrokerUnavailable)
                log.warning("cannot read the limits for metrics: %s", exc, exc_info=trace)
            self._limits_failing = True
            return ()
        if self._limits_failing:
            log.warning("reading the limits for metrics again")
        self._limits_failing = False
        if self.queues is not None:
            limits = [x for x in limits if x.queue in self.queues]
        return tuple(limits)

    async def _flow_counts(self) -> dict[str, int] | None:
        """The server's workflow counters; None when they cannot be read (the queue
        metrics do not depend on them)."""
        b = self.inspector.broker
        try:
            raw = await b.run(lambda: b.redis.hgetall(flow_stats_key(b.prefix)))
            counts = {text(k): int(v) for k, v in raw.items()}
        except Exception as exc:
            if not self._flows_failing:
                trace = not isinstance(exc, BrokerUnavailable)
                log.warning("cannot read the flow counters for metrics: %s", exc, exc_info=trace)
            self._flows_failing = True
            return None
        if self._flows_failing:
            log.warning("reading the flow counters for metrics again")
        self._flows_failing = False
        return {state: counts.get(state, 0) for state in _FLOW_COUNTS}

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
            for x in snap.limits:
                labels = [x.queue, x.task_type or ""]
                if x.concurrency_limit is not None:
                    f.limit_running.add_metric(labels, float(x.running))
                    f.limit_concurrency.add_metric(labels, float(x.concurrency_limit))
                if x.rate_limit is not None:
                    f.limit_rate.add_metric(labels, x.rate_limit.limit / x.rate_limit.per)
                f.held_back.add_metric(labels, float(x.held_back))
            for state, n in (snap.flows or {}).items():
                f.flows.add_metric([state], float(n))
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
        limit = ["queue", "task_type"]
        self.limit_running = GaugeMetricFamily(
            "aqueue_limit_running",
            "Concurrency slots of the limit taken now, summed over limit keys "
            '(task_type "" for a queue\'s own limit).',
            labels=limit,
        )
        self.limit_concurrency = GaugeMetricFamily(
            "aqueue_limit_concurrency",
            "The concurrency limit: attempts at once, per limit key for a task type.",
            labels=limit,
        )
        self.limit_rate = GaugeMetricFamily(
            "aqueue_limit_rate",
            "Task starts a second the rate limit allows (limit / per).",
            labels=limit,
        )
        self.held_back = CounterMetricFamily(
            "aqueue_limit_held_back",
            "Claims the limit held back since it was declared, by every worker.",
            labels=limit,
        )
        self.flows = CounterMetricFamily(
            "aqueue_flows",
            "Workflows started, and ended per final state (completed, failed, cancelled), "
            "on the server.",
            labels=["state"],
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
            self.limit_running, self.limit_concurrency, self.limit_rate, self.held_back,
            self.flows, self.up, self.refreshed,
        )  # fmt: skip
