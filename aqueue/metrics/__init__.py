"""Prometheus metrics (the ``aqueue-redis[prometheus]`` extra).

Two sources, because they answer different questions:

* ``TaskMetrics`` is a middleware. It counts what *this process* ran, per queue and
  task type: attempts processed, failed, retried, archived and revoked, how long they
  took, and how many run now. Add it to the mux of every worker:
  ``mux.use(TaskMetrics())``.
* ``QueueCollector`` reports what the *server* holds, per queue: tasks per state,
  whether the queue is paused, its latency, and the server's own processed/failed
  totals, read with ``Inspector.queue_info``; and per declared limit, its slots taken,
  its concurrency and rate limits and the claims it held back (``Inspector.limits``).
  Every process would report the same numbers, so run it in one place:
  ``aqueue metrics --port 9808``, or one application.

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

try:
    import prometheus_client  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "aqueue.metrics needs prometheus-client: pip install 'aqueue-redis[prometheus]'"
    ) from exc

from ._export import DEFAULT_PORT, Exporter, asgi_app, serve
from ._queues import QueueCollector
from ._tasks import DURATION_BUCKETS, TaskMetrics

__all__ = [
    "DEFAULT_PORT",
    "DURATION_BUCKETS",
    "Exporter",
    "QueueCollector",
    "TaskMetrics",
    "asgi_app",
    "serve",
]
