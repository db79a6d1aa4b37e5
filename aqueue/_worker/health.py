"""Health probes for an orchestrator: ``aqueue worker --health-port PORT``.

``GET /livez`` answers 200 while the worker's event loop responds within a second;
``GET /readyz`` 200 while the worker also reaches its server and its lease is fresh
(``Worker.not_ready``); otherwise 503, each with a one-line JSON body.

The HTTP server runs on a thread of its own (stdlib ``http.server``), never on the
worker's event loop: a loop blocked by a synchronous call must still get an answer, a
503. So the loop beats instead: a task on it (``run_reporting``) reports every ``BEAT``
seconds whether the worker is ready, and the probe judges the loop by the age of the
last report. A report older than ``STALE_AFTER`` means the loop did not get to run
that task for that long.

With ``--processes N`` the supervisor serves the probes and each child only reports:
one line per beat on a pipe the supervisor handed it (``--health-fd``), read by a
thread of the supervisor per child (``Fleet``). The age of a child's last line is
measured when the supervisor reads it, so no clock is shared between processes. The
supervisor answers 200 only while every child would: a child that is starting,
restarting or blocked fails the probe, naming itself.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

import anyio

from ..errors import AqueueError
from .worker import Worker

log = logging.getLogger("aqueue.worker")

# Where the probes listen unless told: every address. Kubernetes probes connect to the
# pod's IP, not to its loopback, so a probe bound to 127.0.0.1 would fail every check.
DEFAULT_HOST = "0.0.0.0"
# Seconds between two reports of the event loop.
BEAT = 0.2
# A loop whose last report is older than this (s) counts as not responding.
STALE_AFTER = 1.0
# A reason longer than this is cut: a report must fit in one atomic pipe write.
_MAX_REASON = 300

Report = Callable[[str | None], None]


class Checks(Protocol):
    """What the HTTP server asks: why the worker(s) fail a probe, or None."""

    def live(self) -> str | None: ...
    def ready(self) -> str | None: ...


class Probe:
    """The last report of one worker's event loop: when it came, and why the worker
    was not ready then (None: it was). Written by the loop, read by the HTTP thread:
    one tuple, replaced whole, so a reader never sees half of a report."""

    def __init__(self) -> None:
        self._last: tuple[float, str | None] | None = None
        self.gone = False  # a supervised child's pipe was closed: the child exited

    def report(self, not_ready: str | None) -> None:
        self._last = (time.monotonic(), not_ready)

    def live(self) -> str | None:
        last = self._last
        if last is None:
            return "event loop not started yet"
        age = time.monotonic() - last[0]
        if age > STALE_AFTER:
            return f"event loop not responding for {age:.1f} s"
        return None

    def ready(self) -> str | None:
        reason = self.live()
        if reason is None and self._last is not None:
            reason = self._last[1]
        return reason


async def beat(not_ready: Callable[[], str | None], report: Report) -> None:
    """Report the worker's readiness every ``BEAT`` seconds, from its event loop."""
    while True:
        report(not_ready())
        await anyio.sleep(BEAT)


async def run_reporting(worker: Worker, report: Report) -> None:
    """``worker.run()``, with ``beat`` beside it on the same event loop."""
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(beat, worker.not_ready, report)
        try:
            await worker.run()
        except Exception as exc:  # raised plain, not wrapped by the task group
            error = exc
        finally:
            tg.cancel_scope.cancel()
    if error is not None:
        raise error


# -- a child of the supervisor: report on a pipe ---------------------------------------


class PipeReport:
    """A supervised child's reports: one JSON line per beat (``null`` or the reason) on
    the pipe ``fd``. Non-blocking: a supervisor that does not read loses beats (its
    probe then fails), it never stalls the worker's event loop."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        os.set_blocking(fd, False)

    def __call__(self, not_ready: str | None) -> None:
        if self._fd is None:
            return
        line = json.dumps(None if not_ready is None else not_ready[:_MAX_REASON]) + "\n"
        try:
            os.write(self._fd, line.encode())
        except BlockingIOError:
            pass  # the pipe is full: this beat is lost, the next may pass
        except OSError:
            self._fd = None  # the supervisor is gone (it takes its children with it)


class Fleet:
    """The probes of a supervisor's ``size`` children, one per slot: each child started
    gets a pipe (``open``) whose lines a thread reads into that slot's ``Probe``."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._probes: list[Probe | None] = [None] * size
        self._pids = [0] * size

    def open(self, index: int) -> int:
        """A new pipe for the child about to start in slot ``index`` (1-based): returns
        the end to hand the child. Call ``started`` with its pid next."""
        read, write = os.pipe()
        probe = Probe()
        self._probes[index - 1] = probe
        threading.Thread(
            target=_read_reports, args=(read, probe), name=f"aqueue-health-{index}", daemon=True
        ).start()
        return write

    def started(self, index: int, pid: int) -> None:
        self._pids[index - 1] = pid

    def _each(self, check: Callable[[Probe], str | None]) -> str | None:
        reasons = []
        for i, probe in enumerate(self._probes):
            name = f"worker process {i + 1}/{self._size}"
            if probe is None:
                reasons.append(f"{name}: not started")
                continue
            name += f" (pid {self._pids[i]})"
            reason = "exited" if probe.gone else check(probe)
            if reason is not None:
                reasons.append(f"{name}: {reason}")
        return "; ".join(reasons) or None

    def live(self) -> str | None:
        return self._each(Probe.live)

    def ready(self) -> str | None:
        return self._each(Probe.ready)


def _read_reports(fd: int, probe: Probe) -> None:
    """Feed ``probe`` from a child's pipe until the child closes it (by exiting)."""
    with os.fdopen(fd, "rb") as pipe:
        for line in pipe:
            try:
                reason = json.loads(line)
            except ValueError:
                continue
            probe.report(reason if isinstance(reason, str) else None)
    probe.gone = True


# -- the HTTP server -----------------------------------------------------------------------


class HealthServer:
    """``/livez`` and ``/readyz`` on ``host:port``, answered from ``checks`` by a thread
    of its own. Binds at construction, so a port in use fails before the worker starts."""

    def __init__(self, host: str, port: int, checks: Checks) -> None:
        try:
            self._httpd = _Server((host, port), _Handler, checks)
        except OSError as exc:
            raise AqueueError(
                f"cannot serve health probes on {_where(host, port)}: {exc.strerror or exc}"
            ) from None
        self.host, self.port = host, self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="aqueue-health", daemon=True
        )

    def start(self) -> HealthServer:
        self._thread.start()
        where = _where(self.host, self.port)
        log.info("health probes at http://%s/livez and http://%s/readyz", where, where)
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler], checks: Checks) -> None:
        # An IPv6 address (``--health-host ::``) needs an IPv6 socket.
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.checks = checks
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, *, with_body: bool) -> None:
        path = self.path.partition("?")[0]
        checks = self.server.checks
        if path == "/livez":
            reason = checks.live()
        elif path == "/readyz":
            reason = checks.ready()
        else:
            self._send(404, {"status": "not found", "reason": "try /livez or /readyz"}, with_body)
            return
        if reason is None:
            self._send(200, {"status": "ok"}, with_body)
        else:
            self._send(503, {"status": "unavailable", "reason": reason}, with_body)

    def _send(self, code: int, body: dict[str, str], with_body: bool) -> None:
        data = json.dumps(body).encode() + b"\n"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # an orchestrator probes every few seconds: nothing for the log
