"""What every workload of the runner uses: a ``System`` (aqueue or a peer, and the
interpreters its children run with), the ``Run`` (server, scale, repeats, a memo) and
the child processes of the driver (``child``), whose last stdout line is their report.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import anyio

from ..common import ROOT, Bench

MAX_LINE = 1 << 24


@dataclass
class System:
    """aqueue or a peer: the interpreter its children run with, what it reports.

    ``web_python`` is the interpreter of its web environment (``envs``), None when the
    run has no web workload or the environment could not be made (``web_error``)."""

    name: str
    python: str
    versions: dict[str, str]
    batch_api: str | None
    web_python: str | None = None
    web_error: str = ""

    @property
    def version(self) -> str:
        """The system's own version: its distribution comes first (``kit``)."""
        return next(iter(self.versions.values()), "?")


class ChildFailed(Exception):
    """Raised when a benchmark child process exits with an error or says nonsense."""


class Run:
    """The run's server, scale and repeats, and the memo workloads share."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.url = bench.url
        # (system, round) -> the no-op backlog's figures: drain, RSS and memory.
        self.backlogs: dict[tuple[str, int], dict[str, float]] = {}

    async def child(self, system: System, *args: object, timeout: float) -> dict[str, Any]:
        """Run one child to completion; its last stdout line, parsed."""
        with tempfile.TemporaryFile() as err:
            with anyio.fail_after(timeout):
                done = await anyio.run_process(
                    command(system, *args), cwd=ROOT, stderr=err, check=False
                )
            if done.returncode != 0:
                raise ChildFailed(failure(system, args, done.returncode, err))
        return last_json(done.stdout, system, args)

    async def used_memory(self) -> int:
        """``used_memory`` once only this connection is left: a finished child's
        connections are freed a moment after it exits, and they weigh far more than
        the jobs."""
        async with self.bench.redis() as r:
            with anyio.fail_after(10):
                while int((await r.info("clients"))["connected_clients"]) > 1:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            return int((await r.info("memory"))["used_memory"])


def command(system: System, *args: object) -> list[str]:
    """The command line of a driver child of ``system``."""
    return [system.python, "-m", "benchmarks.peers.child", system.name, *map(str, args)]


def failure(system: System, args: Sequence[object], code: int | None, err: IO[bytes]) -> str:
    """What a failed child said: its exit status and the tail of its stderr."""
    err.seek(0)
    tail = err.read().decode(errors="replace").strip().splitlines()[-20:]
    mode = args[0] if args else "?"
    return f"{system.name} {mode} exited with {code}:\n" + "\n".join(tail)


def last_json(stdout: bytes, system: System, args: Sequence[object]) -> dict[str, Any]:
    """A child's report: its last stdout line, a JSON object."""
    lines = stdout.decode(errors="replace").strip().splitlines()
    try:
        out: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise ChildFailed(f"{system.name} {args[0]} printed {stdout[-500:]!r}") from None
    return out
