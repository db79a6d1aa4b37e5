"""Exposing a registry: ``asgi_app``, ``Exporter`` (an HTTP server on its own thread)
and ``serve``, the blocking exporter behind ``aqueue metrics``."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from wsgiref.simple_server import WSGIServer

import anyio
import prometheus_client
from prometheus_client.registry import REGISTRY, CollectorRegistry

from .._redis.broker import redacted
from ..errors import AqueueError, InvalidOption
from ._queues import QueueCollector

log = logging.getLogger("aqueue.metrics")

DEFAULT_PORT = 9808


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
            raise InvalidOption(f"port must be an int from 0 to 65535, got {port!r}")
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
