"""The contract between the driver (``child``) and the adapters, standard library only.

An adapter module (``adapter_<system>.py``) provides:

- ``DISTRIBUTIONS``: the distributions whose versions the report records, the system's
  own first (its distribution name may differ from the system's: aqueue-redis);
- ``BATCH_API``: the name of the system's batch enqueue call, or ``None``;
- ``producer(url)``: an async context manager giving a connected ``Producer``;
- ``worker(url, concurrency)``: an async context manager that serves the benchmark
  jobs while it is open, with ``concurrency`` jobs at a time, and gives a ``Settled``.

The worker's jobs report to ``PROBE``: each finished job calls ``PROBE.done()`` (from the
handler, or from a hook the system runs once it has recorded the outcome) and the
latency job also calls ``PROBE.stamp(t)`` first thing. Five jobs exist in every
system: ``item(n)`` (what the enqueue workloads write; never run), ``noop()`` (the
backlog), ``stamp(t)`` (latency; ``t`` is ``time.time()`` just before enqueueing),
``crash(i)`` (the crash workload's: its handler is ``await crash_job(i)``, which writes
to the ``LEDGER``) and ``welcome(email, plan)`` (what the web app enqueues; never run).
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any, Protocol
from urllib.parse import urlsplit

# ``await settled(n)``: is the outcome of at least n finished jobs written on the server
# (acked, result stored, removed from the queue: whatever the system counts as done)?
Settled = Callable[[int], Awaitable[bool]]


class Unsupported(Exception):
    """Raised when a system has no API for what a workload asks (a batch enqueue)."""


class Producer:
    """One system's enqueue side, connected. Adapters override what their system has."""

    async def item(self, n: int) -> None:
        """Enqueue ``item(n)``."""
        raise NotImplementedError

    async def noop(self) -> None:
        """Enqueue ``noop()``."""
        raise NotImplementedError

    async def stamp(self, t: float) -> None:
        """Enqueue ``stamp(t)``."""
        raise NotImplementedError

    async def items(self, ns: Sequence[int]) -> None:
        """Enqueue ``item(n)`` for each n with the system's batch API."""
        raise Unsupported("no batch enqueue API")

    async def noops(self, k: int) -> None:
        """Enqueue k ``noop()`` with the system's batch API."""
        raise Unsupported("no batch enqueue API")

    async def crash(self, i: int) -> None:
        """Enqueue ``crash(i)``."""
        raise NotImplementedError

    async def signup(self, email: str, plan: str) -> None:
        """Enqueue ``welcome(email, plan)``, as the web app's ``POST /signup`` does."""
        raise NotImplementedError


class Adapter(Protocol):
    """What ``child`` uses of an adapter module (see the module docstring)."""

    DISTRIBUTIONS: tuple[str, ...]
    BATCH_API: str | None

    def producer(self, url: str) -> AbstractAsyncContextManager[Producer]: ...

    def worker(self, url: str, concurrency: int) -> AbstractAsyncContextManager[Settled]: ...


class Probe:
    """What the benchmark jobs report to in the worker process."""

    def __init__(self) -> None:
        self.count = 0
        self.want = 0
        self.latencies_ms: list[float] = []
        self._reached: asyncio.Event | None = None

    def expect(self, want: int) -> asyncio.Event:
        """Count from zero again; the event is set once ``want`` jobs are done."""
        self.count, self.want = 0, want
        self._reached = asyncio.Event()
        return self._reached

    def done(self) -> None:
        self.count += 1
        if self._reached is not None and self.count >= self.want:
            self._reached.set()

    def stamp(self, t: float) -> None:
        """Record how long after its enqueue (``t``, ``time.time()``) a job started."""
        self.latencies_ms.append((time.time() - t) * 1000)


PROBE = Probe()

# The background tasks of the workers now open (see ``background``).
_RUNNING: set[asyncio.Task[Any]] = set()
# Seconds a cancelled worker task gets to end before the driver gives up on it.
STOP_SECONDS = 5.0
# Worker tasks that ignored cancellation: the process must exit without waiting on them.
ABANDONED: list[asyncio.Task[Any]] = []


@asynccontextmanager
async def background(main: Coroutine[Any, Any, Any]) -> AsyncIterator[None]:
    """Run a worker's main coroutine as a task while the block runs; cancel it after.

    ``wait`` fails at once if the task ends early, instead of waiting out its deadline.
    A task still running ``STOP_SECONDS`` after its cancellation is left in
    ``ABANDONED``: the figures are taken by then, and waiting would hang the run.
    """
    task = asyncio.create_task(main)
    _RUNNING.add(task)
    try:
        yield
    finally:
        _RUNNING.discard(task)
        if task.done():  # it ended early: ``wait`` has reported why
            if not task.cancelled():
                task.exception()  # retrieved, so asyncio does not log it again
        else:
            await _stop(task)


async def _stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=STOP_SECONDS)
    if done:
        with suppress(asyncio.CancelledError):
            await task
    else:
        print(
            f"the worker still runs {STOP_SECONDS:g} s after its cancellation; leaving it",
            file=sys.stderr,
            flush=True,
        )
        ABANDONED.append(task)


async def wait(event: asyncio.Event, timeout: float) -> None:
    """Wait for ``event``; raise if ``timeout`` passes or a worker task ends first."""
    waiter = asyncio.ensure_future(event.wait())
    done, _ = await asyncio.wait(
        {waiter, *_RUNNING}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
    )
    if waiter in done:
        return
    waiter.cancel()
    for task in done:
        error = "cancelled" if task.cancelled() else task.exception()
        raise RuntimeError(f"the worker stopped before the jobs were done: {error!r}")
    raise TimeoutError(f"the jobs were not done within {timeout:g} s")


def peak_rss_mb() -> float:
    """This process's peak RSS so far, in MiB.

    On Linux from ``VmHWM``: ``ru_maxrss`` survives ``exec``, so a child would report
    its parent's peak at fork time whenever that was higher. (The same reading as
    ``benchmarks.child``, which cannot be imported in a peer's environment.)
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


async def until(when: float) -> None:
    """Sleep until ``when`` (monotonic): a fixed schedule, so a slow call does not
    lower the rate, the next ones just go out at once."""
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class Ledger:
    """Where the crash workload's jobs write that they started and that they finished,
    on the benchmark's server, so that the runner counts from outside every system what
    ran and how often: ``INCR STARTED`` at a job's start, ``HINCRBY DONE <i> 1`` at its
    end (the job's own last act, before the system records the outcome).

    Its own connection, speaking RESP with the standard library: the same few bytes
    whatever the system's client. The worker process learns the server and the jobs'
    length from its environment (``URL_ENV``, ``SECONDS_ENV``), which is how the runner
    reaches the handlers of a worker started by a system's own CLI.
    """

    STARTED = "bench:crash:started"
    DONE = "bench:crash:done"
    URL_ENV = "BENCH_LEDGER_URL"
    SECONDS_ENV = "BENCH_JOB_SECONDS"

    def __init__(self) -> None:
        self._io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock: asyncio.Lock | None = None

    @property
    def job_seconds(self) -> float:
        return float(os.environ.get(self.SECONDS_ENV, "2"))

    async def call(self, *args: str) -> int:
        """One command with an integer reply; one at a time on the connection."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._io is None:
                self._io = await _connect(os.environ[self.URL_ENV])
            reader, writer = self._io
            writer.write(_resp(args))
            line = await reader.readline()
        if not line.startswith(b":"):
            raise RuntimeError(f"the ledger's server replied {line!r} to {args[0]}")
        return int(line[1:])


LEDGER = Ledger()


async def crash_job(i: int) -> None:
    """The crash workload's job: it says it started, sleeps, says it ended."""
    await LEDGER.call("INCR", Ledger.STARTED)
    await asyncio.sleep(LEDGER.job_seconds)
    await LEDGER.call("HINCRBY", Ledger.DONE, str(i), "1")


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``redis://host:port[/db]`` (what the embedded server hands out)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(
        parts.hostname or "127.0.0.1", parts.port or 6379
    )
    db = parts.path.strip("/")
    if db and db != "0":
        writer.write(_resp(("SELECT", db)))
        if not (await reader.readline()).startswith(b"+OK"):
            raise RuntimeError(f"the ledger's server refused SELECT {db}")
    return reader, writer


def _resp(args: Sequence[str]) -> bytes:
    """A command as RESP: an array of bulk strings."""
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)
