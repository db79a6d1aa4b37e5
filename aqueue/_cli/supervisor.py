"""``aqueue worker --processes N``: one supervisor process, N ordinary worker processes.

Each child is ``python -m aqueue._cli worker ...`` with the same flags minus
``--processes``: a complete worker with its own id, leases and heartbeat, so the
delivery guarantees are exactly those of N workers started by hand. The supervisor
holds no connection to the server. It

- forwards SIGTERM and SIGINT to every child (a second signal is forwarded too, which
  makes the children cancel their handlers at once);
- restarts a child that exits while no shutdown was asked, after a backoff that doubles
  from 0.5 s up to 30 s and resets once a child has run for a minute;
- exits 0 once every child has exited 0 after a shutdown signal, 1 otherwise, and 2 at
  once when a child reports a usage error (restarting it would only fail again);
- with ``--health-port``, serves the health probes for all its children, each of which
  reports on a pipe of its own (``_worker/health.py``).

Children run in their own process group, so a Ctrl-C in a terminal reaches them once
(forwarded by the supervisor), not twice; on Linux they also get SIGTERM if the
supervisor itself dies (``PR_SET_PDEATHSIG``), so a killed supervisor leaves no orphans.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from .._worker.health import DEFAULT_HOST, Fleet, HealthServer

log = logging.getLogger("aqueue.supervisor")

BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
# A child that ran this long before dying is not crash-looping: its backoff resets.
STABLE_AFTER = 60.0
POLL = 0.05
USAGE = 2


def child_argv(args: argparse.Namespace) -> list[str]:
    """The ``aqueue worker`` flags of one child: the parsed flags minus ``--processes``."""
    argv = ["worker", args.app]
    if args.url:
        argv += ["--url", args.url]
    if args.concurrency is not None:
        argv += ["--concurrency", str(args.concurrency)]
    for name, weight in args.queue or []:
        argv += ["--queue", f"{name}={weight!r}"]
    if args.strict:
        argv.append("--strict")
    if args.no_scheduler:
        argv.append("--no-scheduler")
    if args.shutdown_timeout is not None:
        argv += ["--shutdown-timeout", repr(args.shutdown_timeout)]
    argv += ["--log-level", args.log_level, "--loop", args.loop]
    return argv


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


class Child:
    """One worker slot: the process currently filling it and its restart backoff."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.backoff = BACKOFF_MIN
        self.restart_at: float | None = None


class Supervisor:
    def __init__(
        self,
        processes: int,
        argv: list[str],
        *,
        grace: float | None = None,
        fleet: Fleet | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.children = [Child(i + 1) for i in range(processes)]
        self.fleet = fleet
        self.command = [sys.executable, "-m", "aqueue._cli", *argv]
        self.worker_id = worker_id
        self.signals: list[signal.Signals] = []
        self.stopping = False
        # After a shutdown signal, children still running past this get SIGKILL: a
        # safety net only, as each child bounds its own shutdown by its timeout.
        self.grace = grace

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for child in self.children:
                self._start(child)
            return self._loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._kill_all()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signal.Signals(signum))

    def _start(self, child: Child) -> None:
        command, fds = self.command, tuple[int, ...]()
        if self.worker_id is not None:
            # One stable id per slot: a restarted child takes its slot's tasks back.
            command = [*command, "--worker-id", f"{self.worker_id}-{child.index}"]
        if self.fleet is not None:
            fd = self.fleet.open(child.index)
            command, fds = [*command, "--health-fd", str(fd)], (fd,)
        try:
            child.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                process_group=0,
                preexec_fn=_die_with_parent,
                pass_fds=fds,
            )
        finally:
            for fd in fds:
                os.close(fd)  # the child's end: the pipe ends when the child exits
        if self.fleet is not None:
            self.fleet.started(child.index, child.process.pid)
        child.started = time.monotonic()
        child.restart_at = None
        log.info(
            "started worker process %d/%d (pid %d)",
            child.index,
            len(self.children),
            child.process.pid,
        )

    def _loop(self) -> int:
        failed = False
        deadline: float | None = None
        while True:
            while self.signals:
                sig = self.signals.pop(0)
                if not self.stopping:
                    log.info("received %s: stopping %d worker processes", sig.name, self._alive())
                    self.stopping = True
                    if self.grace is not None:
                        deadline = time.monotonic() + self.grace
                self._forward(sig)
            now = time.monotonic()
            for child in self.children:
                p = child.process
                if p is not None and (code := p.poll()) is not None:
                    child.process = None
                    if code == USAGE:
                        log.error("worker process pid %d exited with a usage error", p.pid)
                        self._stop_all()
                        return USAGE
                    if self.stopping:
                        # -SIGTERM: the child was still starting (the worker installs its
                        # signal handler before it claims anything), so nothing was lost.
                        failed |= code not in (0, -signal.SIGTERM)
                        log.info("worker process pid %d exited (code %d)", p.pid, code)
                        continue
                    if now - child.started >= STABLE_AFTER:
                        child.backoff = BACKOFF_MIN
                    log.warning(
                        "worker process pid %d exited unexpectedly (code %d); "
                        "restarting it in %.1f s",
                        p.pid,
                        code,
                        child.backoff,
                    )
                    child.restart_at = now + child.backoff
                    child.backoff = min(child.backoff * 2, BACKOFF_MAX)
                elif p is None and not self.stopping and now >= (child.restart_at or now + 1):
                    self._start(child)
            if self.stopping and self._alive() == 0:
                log.info("all worker processes stopped")
                return 1 if failed else 0
            if deadline is not None and now > deadline:
                log.error("worker processes still running after %.0f s: killing them", self.grace)
                self._kill_all()
                failed = True
                deadline = None
            time.sleep(POLL)

    def _alive(self) -> int:
        return sum(c.process is not None for c in self.children)

    def _forward(self, sig: signal.Signals) -> None:
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(sig)

    def _stop_all(self) -> None:
        self.stopping = True
        self._forward(signal.SIGTERM)
        for child in self.children:
            if child.process is not None:
                try:
                    child.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()

    def _kill_all(self) -> None:
        for child in self.children:
            p = child.process
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def supervise(processes: int, args: argparse.Namespace, shutdown_timeout: float) -> int:
    """Run ``processes`` copies of the worker described by ``args`` until signalled.

    ``shutdown_timeout`` is the children's own: the flag's value, or the ``Worker``
    object's when the app is one and the flag is not given.
    """
    # Each child gets its own shutdown_timeout, then needs a few round trips to write
    # its last acks and requeue what it held.
    grace = shutdown_timeout + 30.0
    if args.health_port is None:
        return Supervisor(processes, child_argv(args), grace=grace, worker_id=args.worker_id).run()
    fleet = Fleet(processes)
    host = args.health_host or DEFAULT_HOST
    server = HealthServer(host, args.health_port, fleet).start()
    try:
        return Supervisor(
            processes, child_argv(args), grace=grace, fleet=fleet, worker_id=args.worker_id
        ).run()
    finally:
        server.close()


__all__ = ["Supervisor", "child_argv", "supervise"]
