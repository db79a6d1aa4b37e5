"""The app the scaling workloads run with ``aqueue worker benchmarks.scale_app:mux``.

A module of its own, so that each worker process imports only aqueue and these two
handlers, as a production worker imports only its app.

The handlers wait at a gate until the file named by ``$AQUEUE_BENCH_GATE`` exists,
which the benchmark creates once every worker process has registered with the server.
Without it, the first process up would drain part of the backlog alone while the others
still import, and the figure would depend on how fast Python starts on a busy machine.
Only the tasks claimed before the gate opens wait; after that the check is one global
read. Without the variable there is no gate.
"""

from __future__ import annotations

import os

import anyio

import aqueue

GATE_ENV = "AQUEUE_BENCH_GATE"
# Iterations of ``burn`` per ``cpu`` task: about 1 ms of pure-Python CPU on the 2-core VM
# of RESULTS.md. The workload measures the real cost on the machine it runs on.
CPU_LOOPS = 25_000

mux = aqueue.Mux()

_gate_path = os.environ.get(GATE_ENV)
_open = _gate_path is None
_opened: anyio.Event | None = None


async def _gate() -> None:
    """Wait until the gate file exists: the first caller polls, the others wait on it."""
    global _open, _opened
    if _opened is not None:
        await _opened.wait()
        return
    _opened = anyio.Event()
    assert _gate_path is not None
    # Another process creates the file: polling is the signal. A stat is a microsecond.
    while not os.path.exists(_gate_path):  # noqa: ASYNC110, ASYNC240
        await anyio.sleep(0.001)
    _open = True
    _opened.set()


def burn(loops: int = CPU_LOOPS) -> int:
    """Pure-Python work that holds the interpreter, like parsing or templating would."""
    x = 0
    for i in range(loops):
        x ^= i * i
    return x


@mux.task("scale:noop")
async def noop(ctx: aqueue.Context) -> None:
    """Does nothing: the framework and the server are the whole cost."""
    if not _open:
        await _gate()


@mux.task("scale:cpu")
async def cpu(ctx: aqueue.Context) -> None:
    """About 1 ms of CPU without awaiting: the event loop is blocked meanwhile."""
    if not _open:
        await _gate()
    burn()
