"""The app every soak worker process runs: ``aqueue worker tests.soak.app:worker``.

Each handler records its start and its finish (``record``) on the record server named
by ``SOAK_RECORD_URL``, then returns a value the oracle can check (a step returns its
own name, so its dependents' ``ctx.inputs`` must be their dependencies' names). The
limits here are the ones the oracle holds the records to.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import anyio
import msgspec

import aqueue

from .record import Event, Recorder

# The limits under test (the oracle imports them).
RATE = aqueue.Rate(8, per=2.0)
TENANT_SLOTS = 2

QUEUES = {"default": 3, "rated": 1, "tenants": 1, "flows": 2}


class Work(msgspec.Struct, frozen=True):
    ms: int
    tag: str = ""


class Tenant(msgspec.Struct, frozen=True):
    tenant: str
    ms: int


class Step(msgspec.Struct, frozen=True):
    flow: str
    name: str
    ms: int


mux = aqueue.Mux()
_recorders: dict[tuple[str, int], Recorder] = {}


def _rec() -> Recorder:
    # One per event loop and record server: a worker process has one of each; the soak's
    # own process runs a final drain in each run's loop, against each run's server.
    key = (os.environ["SOAK_RECORD_URL"], id(asyncio.get_running_loop()))
    if key not in _recorders:
        _recorders[key] = Recorder(key[0])
    return _recorders[key]


async def close_recorders() -> None:
    """Close this process's recorders of the running loop (the soak's final drain)."""
    loop = id(asyncio.get_running_loop())
    for key in [k for k in _recorders if k[1] == loop]:
        await _recorders.pop(key).aclose()


async def _record(kind: str, ctx: aqueue.Context, key: str = "", inputs: Any = ()) -> None:
    await _rec().event(
        Event(
            kind, ctx.task_id, ctx.task_type, os.getpid(), time.time(), ctx.retry_count,
            key, [str(i) for i in inputs],
        )
    )  # fmt: skip


async def _run(ctx: aqueue.Context, ms: int, key: str = "", inputs: Any = ()) -> None:
    await _record("s", ctx, key, inputs)
    await anyio.sleep(ms / 1000)
    await _record("f", ctx, key)


@mux.task("soak:work", queue="default")
async def work(ctx: aqueue.Context, w: Work) -> str:
    await _run(ctx, w.ms)
    return w.tag


@mux.task("soak:rated", queue="rated", rate_limit=RATE)
async def rated(ctx: aqueue.Context, w: Work) -> str:
    await _run(ctx, w.ms)
    return w.tag


@mux.task(
    "soak:tenant",
    queue="tenants",
    concurrency_limit=TENANT_SLOTS,
    limit_key=lambda t: t.tenant,
)
async def tenant(ctx: aqueue.Context, t: Tenant) -> str:
    await _run(ctx, t.ms, key=t.tenant)
    return t.tenant


@mux.task("soak:step", queue="flows")
async def step(ctx: aqueue.Context, s: Step) -> str:
    await _run(ctx, s.ms, key=f"{s.flow}/{s.name}", inputs=ctx.inputs or ())
    return s.name


# Every worker runs the scheduler: whichever fires a tick first enqueues it, once.
CRON_ENTRY = "soak:cron"
mux.cron_task("*/2 * * * * *", work, Work(ms=5, tag="cron"), entry=CRON_ENTRY, retention=7200)


def _retry_delay(retry_count: int, error: BaseException, task: aqueue.TaskInfo) -> float:
    # A soak's drain must not wait out the default backoff (15 s and more).
    return 0.5


# The target of the command line; every soak worker passes --url and --worker-id.
worker = aqueue.Worker(
    mux,
    "redis://127.0.0.1:1/0",
    concurrency=8,
    queues=QUEUES,
    lease_ttl=float(os.environ.get("SOAK_LEASE_TTL", "6")),
    shutdown_timeout=2.0,
    retry_delay=_retry_delay,
)
