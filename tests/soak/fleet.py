"""The soak's worker slots: each one a real ``aqueue worker`` command behind its own
fault proxy, plain or with ``--processes 2`` (a supervisor restarting its children).

A slot's worker id is stable (``soak-<n>``, the children of a supervisor
``soak-<n>-1`` and ``-2``), so a worker restarted in it takes its dead predecessor's
tasks back at once; a restart may also be told to take a fresh id, leaving the dead
one's lease to the reapers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio

from .faultnet import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.soak.app:worker"


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


class Slot:
    def __init__(
        self,
        n: int,
        proxy: FaultProxy,
        *,
        processes: int,
        env: dict[str, str],
        logs: Path,
    ) -> None:
        self.n = n
        self.proxy = proxy
        self.processes = processes
        self.env = env
        self.log = logs / f"worker-{n}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.worker_id = f"soak-{n}"
        self.ids: set[str] = set()  # every worker id this slot has run under

    def start(self, *, fresh_id: bool = False) -> None:
        self.generation += 1
        if fresh_id:
            self.worker_id = f"soak-{self.n}-g{self.generation}"
        args = [
            sys.executable, "-m", "aqueue._cli", "worker", APP,
            "--url", self.proxy.url, "--worker-id", self.worker_id, "--log-level", "WARNING",
        ]  # fmt: skip
        if self.processes > 1:
            args += ["--processes", str(self.processes)]
            self.ids.update(f"{self.worker_id}-{i}" for i in range(1, self.processes + 1))
        else:
            self.ids.add(self.worker_id)
        with self.log.open("ab") as out:
            out.write(f"--- generation {self.generation}: {' '.join(args)}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                args,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )

    def live_ids(self) -> list[str]:
        """The worker ids of the slot's command now."""
        if self.processes > 1:
            return [f"{self.worker_id}-{i}" for i in range(1, self.processes + 1)]
        return [self.worker_id]

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def pids(self) -> list[int]:
        """The processes that run handlers: the worker, or the supervisor's children."""
        if not self.alive():
            return []
        assert self.popen is not None
        if self.processes > 1:
            return _children(self.popen.pid)
        return [self.popen.pid]

    def all_pids(self) -> list[int]:
        if not self.alive():
            return []
        assert self.popen is not None
        return [self.popen.pid, *_children(self.popen.pid)]

    def signal(self, pid: int, sig: signal.Signals) -> bool:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True

    async def exit(self, timeout: float) -> int | None:
        """Wait for the slot's command to exit; None if it is still running."""
        assert self.popen is not None
        with anyio.move_on_after(timeout):
            while True:
                if self.popen.poll() is not None:
                    break
                await anyio.sleep(0.05)
        return self.popen.poll()

    async def stop(self, timeout: float = 20.0) -> int | None:
        """SIGCONT everything (a stopped process cannot act on SIGTERM), then SIGTERM
        and wait; SIGKILL what is left after ``timeout``. Returns the exit code, None
        if it had to be killed."""
        if not self.alive():
            return self.popen.returncode if self.popen else 0
        assert self.popen is not None
        for pid in self.all_pids():
            self.signal(pid, signal.SIGCONT)
        self.popen.send_signal(signal.SIGTERM)
        code = await self.exit(timeout)
        if code is None:
            for pid in self.all_pids():
                self.signal(pid, signal.SIGKILL)
            self.popen.kill()
            self.popen.wait()
        return code
