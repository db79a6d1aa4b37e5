"""OpenTelemetry tracing (the ``aqueue-redis[otel]`` extra).

The producer puts its current trace context into the task's headers, and a worker
middleware runs the handler in a child span of it::

    from aqueue.tracing import TracingMiddleware, traced_headers

    await client.enqueue(send_email, email, headers=traced_headers())  # producer
    mux.use(TracingMiddleware())                                       # worker

The span is named ``aqueue.task <type>`` (kind CONSUMER) and carries the task id,
queue, type and retry count; a failed attempt (an exception, a timeout) sets its
status to ERROR. The context travels in the format of the globally configured
propagator: W3C ``traceparent``/``tracestate`` and ``baggage`` unless you set another.

Nothing in ``aqueue`` imports this module, so without the extra (or without using it)
tracing costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "aqueue.tracing needs opentelemetry-api: pip install 'aqueue-redis[otel]'"
    ) from exc

from ._mux import Context
from ._version import __version__
from .errors import Revoke

__all__ = ["TracingMiddleware", "traced_headers"]

CallNext = Callable[[], Awaitable[Any]]


def traced_headers(headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``headers`` plus the current trace context, to pass as ``headers=`` to
    ``Client.enqueue`` or ``Job``. Outside any span it is just the copy."""
    carrier = dict(headers or {})
    propagate.inject(carrier)
    return carrier


class TracingMiddleware:
    """Worker middleware: runs each attempt in a span, the child of the span that
    enqueued the task when its headers carry one (a new trace otherwise).

    Add it first with ``mux.use`` so that the other middleware run inside the span.
    ``tracer_provider`` defaults to the global one.
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer("aqueue", __version__, tracer_provider)

    async def __call__(self, ctx: Context, call_next: CallNext) -> Any:
        parent = propagate.extract(ctx.headers)
        started, started_wall = time.monotonic(), time.time()
        attributes: dict[str, str | int] = {
            "messaging.system": "aqueue",
            "messaging.operation.type": "process",
            "messaging.destination.name": ctx.queue,
            "messaging.message.id": ctx.task_id,
            "aqueue.task.type": ctx.task_type,
            "aqueue.task.retry_count": ctx.retry_count,
            "aqueue.task.max_retry": ctx.max_retry,
        }
        with self.tracer.start_as_current_span(
            f"aqueue.task {ctx.task_type}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await call_next()
            except Revoke:
                span.add_event("revoked")  # dropped on purpose: not an error
                raise
            except anyio.get_cancelled_exc_class():
                if _timed_out(ctx, started, started_wall):
                    span.set_status(Status(StatusCode.ERROR, "the task timed out"))
                else:
                    # A shutdown, a lost lease or a cancel request: the worker decides.
                    span.add_event("cancelled")
                raise
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise


def _timed_out(ctx: Context, started: float, started_wall: float) -> bool:
    """Whether a cancellation arriving now is the worker's timeout (see the function of
    the same name in ``aqueue.metrics``, which this module must not import)."""
    deadline = ctx.deadline
    if deadline is None:
        return False
    return time.monotonic() - started >= deadline.timestamp() - started_wall
