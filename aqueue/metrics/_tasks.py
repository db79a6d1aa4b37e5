"""``TaskMetrics``: the middleware that counts what this process ran, per queue and
task type."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.registry import REGISTRY, CollectorRegistry

from .._mux import Context
from ..errors import Retry, Revoke, SkipRetry

# From 5 ms to the default task timeout of 30 minutes.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    1800.0,
)  # fmt: skip

IsFailure = Callable[[BaseException], bool]
CallNext = Callable[[], Awaitable[Any]]


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
