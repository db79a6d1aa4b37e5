"""Reading workflows (``Client.flow``, ``Client.result`` of a flow, ``Inspector.flows``),
cancelling one, and forgetting those past their retention. The hand-overs that move a
flow along are ``_flows``'."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ._codec import decode_value
from ._flow import FlowInfo, Output, assemble, flat_output
from ._flows import reply_bytes, step_task_id
from ._reads import read_tasks, text
from ._redis import scripts
from ._redis.broker import Broker
from ._redis.keys import FlowKeys, flow_channel, flow_stats_key, flows_key
from ._task import State, TaskInfo, from_ms
from .errors import TaskNotFound


class _Stored:
    """What a flow's own keys hold (one read)."""

    def __init__(self, flow_id: str, replies: Sequence[Any]) -> None:
        meta, ended, errors, released, results, tpls = replies
        if not meta:
            raise TaskNotFound(f"no flow {flow_id!r} (unknown, or its retention passed)")
        self.meta = {text(k): v for k, v in meta.items()}
        self.ended = {int(k): text(v) for k, v in ended.items()}
        self.errors = {int(k): text(v) for k, v in errors.items()}
        self.released = {int(text(x)) for x in released}
        self.released.update(
            i for i in range(int(self.field("total"))) if f"d:{i}" not in self.meta
        )
        self.results = {int(k): v for k, v in results.items()}
        self.total = int(self.meta["total"])
        # Each step's queue and type (from what the flow keeps to write it).
        self.steps: dict[int, tuple[str, str]] = {}
        for k, v in tpls.items():
            queue, *_, task_type = decode_value(v)
            self.steps[int(k)] = (queue, task_type)

    def field(self, name: str) -> str:
        return text(self.meta[name])

    @property
    def error(self) -> str | None:
        """Why the flow failed, naming the failed step's id and type."""
        return self.named(self.field("error")) if "error" in self.meta else None

    def named(self, why: str) -> str:
        """``why`` with the type of the step whose failure it tells of."""
        if "failed" in self.meta:
            idx = int(self.field("failed"))
            why = _with_type(why, self.field("id"), idx, self.steps[idx][1])
        return why


async def _read(broker: Broker, flow_id: str) -> _Stored:
    w = FlowKeys(broker.prefix, flow_id)

    async def read() -> list[Any]:
        pipe = broker.redis.pipeline(transaction=False)
        pipe.hgetall(w.meta)
        pipe.hgetall(w.ended)
        pipe.hgetall(w.errors)
        pipe.smembers(w.released)
        pipe.hgetall(w.results)
        pipe.hgetall(w.tpl)
        return list(await pipe.execute())

    return _Stored(flow_id, await broker.run(read))


async def read_flow(broker: Broker, flow_id: str) -> FlowInfo:
    """The flow as stored now; ``TaskNotFound`` when unknown or past its retention."""
    s = await _read(broker, flow_id)
    refs = [(s.steps[i][0], step_task_id(flow_id, i)) for i in range(s.total)]
    tasks = await read_tasks(broker, [refs[i] for i in sorted(s.released)])
    in_queues = dict(zip(sorted(s.released), tasks, strict=True))
    steps = [_step_info(s, i, refs[i], in_queues.get(i)) for i in range(s.total)]
    state = s.field("state")
    if state == "open":
        started = any(t.state not in ("pending", "scheduled") for t in steps)
        state = "running" if started or s.ended else "pending"
    completed = s.meta.get("completed")
    return FlowInfo(
        id=flow_id,
        state=state,
        steps=steps,
        done=len(s.ended),
        total=s.total,
        created_at=from_ms(int(s.field("created"))),
        completed_at=from_ms(int(text(completed))) if completed else None,
        error=s.error,
    )


def _step_info(s: _Stored, i: int, ref: tuple[str, str], task: TaskInfo | None) -> TaskInfo:
    """A step's TaskInfo: the task in its queue, or what the flow knows of a step never
    written there (waiting for its dependencies: ``scheduled``; archived unrun)."""
    if task is not None:
        return task
    queue, task_id = ref
    ended = s.ended.get(i)
    result = decode_value(s.results[i]) if i in s.results else None
    state = State.SCHEDULED.value
    if ended == "completed":
        state = State.COMPLETED.value  # kept by the flow after its queue forgot it
    elif ended is not None:
        state = State.ARCHIVED.value
    return TaskInfo(
        id=task_id, queue=queue, type=s.steps[i][1], state=state,
        last_error=s.named(s.errors[i]) if i in s.errors else None, result=result,
        flow_id=task_id.rpartition("-")[0],
    )  # fmt: skip


async def flow_output(broker: Broker, flow_id: str) -> tuple[str, Any, str | None]:
    """The flow's state, what it results in (its last element's result, or a list of
    several) and its error. Reads only those (a few fields and the output steps'
    results), not the whole flow: ``Client.result`` reads it each time the flow speaks."""
    w = FlowKeys(broker.prefix, flow_id)
    fields = ("state", "output", "error", "failed")
    state, output, error, failed = await broker.run(lambda: broker.redis.hmget(w.meta, fields))
    if state is None:
        raise TaskNotFound(f"no flow {flow_id!r} (unknown, or its retention passed)")
    if text(state) == "completed":
        shape: Output = decode_value(reply_bytes(output))
        wanted = [str(i) for i in flat_output(shape)]
        raw = await broker.run(lambda: broker.redis.hmget(w.results, wanted))
        # A step whose handler returned None keeps no result: it reads as None.
        values = {int(i): decode_value(reply_bytes(v)) for i, v in zip(wanted, raw, strict=True)}
        return "completed", assemble(shape, values), None
    return text(state), None, await _why(broker, w, flow_id, error, failed)


async def _why(broker: Broker, w: FlowKeys, flow_id: str, error: Any, failed: Any) -> str | None:
    """The flow's error (``error``, as stored), naming the failed step's type."""
    if error is None:
        return None
    why = text(error)
    if failed is not None:
        idx = int(text(failed))
        tpl = await broker.run(lambda: broker.redis.hget(w.tpl, str(idx)))
        if tpl is not None:
            why = _with_type(why, flow_id, idx, decode_value(reply_bytes(tpl))[-1])
    return why


def _with_type(why: str, flow_id: str, idx: int, task_type: str) -> str:
    """``why`` with the type of the step whose failure it tells of."""
    step = f"step {flow_id}-{idx}"
    return why.replace(step, f"{step} ({task_type})", 1)


async def cancel_flow(broker: Broker, flow_id: str) -> list[tuple[str, str]]:
    """Cancel a flow: steps not released are archived; returns (queue, task id) of the
    released steps still running or waiting in their queues, for the caller to cancel."""
    w = FlowKeys(broker.prefix, flow_id)
    call = scripts.cancel_flow(w, flow_channel(broker.prefix, flow_id), int(time.time() * 1000))
    reply = await broker.run(lambda: broker.script(call))
    if reply == -1:
        raise TaskNotFound(f"no flow {flow_id!r} (unknown, or its retention passed)")
    if not isinstance(reply, list):
        return []
    if int(reply[0]):
        await broker.run(lambda: broker.redis.hincrby(flow_stats_key(broker.prefix), "cancelled"))
    indexes = [int(text(i)) for i in reply[1:]]
    if not indexes:
        return []
    tpls = await broker.run(lambda: broker.redis.hmget(w.tpl, [str(i) for i in indexes]))
    queues = [decode_value(reply_bytes(t))[0] for t in tpls]
    return [(q, step_task_id(flow_id, i)) for i, q in zip(indexes, queues, strict=True)]


# Of a flow none of whose steps ended yet, the first steps a summary reads to tell
# ``pending`` (none started) from ``running``.
SUMMARY_FIRST = 50
_OPEN = ("pending", "running")


async def flow_summary(broker: Broker, flow_id: str) -> FlowInfo:
    """The flow without its steps (``steps`` is empty): a few fields and counts, one
    or two round trips whatever its size (listings; a dashboard polls them). A flow
    with no step ended yet is ``running`` when one of its first ``SUMMARY_FIRST``
    steps started (``read_flow`` looks at them all)."""
    w = FlowKeys(broker.prefix, flow_id)
    fields = ("state", "total", "created", "completed", "error", "failed")

    async def read() -> list[Any]:
        pipe = broker.redis.pipeline(transaction=False)
        pipe.hmget(w.meta, fields)
        pipe.hlen(w.ended)
        return list(await pipe.execute())

    (state, total, created, completed, error, failed), ended = await broker.run(read)
    if state is None:
        raise TaskNotFound(f"no flow {flow_id!r} (unknown, or its retention passed)")
    count = int(text(total))
    shown = text(state)
    if shown == "open":
        started = int(ended) > 0 or await _first_started(broker, w, flow_id, count)
        shown = "running" if started else "pending"
    return FlowInfo(
        id=flow_id, state=shown, steps=[], done=int(ended), total=count,
        created_at=from_ms(int(text(created))),
        completed_at=from_ms(int(text(completed))) if completed is not None else None,
        error=await _why(broker, w, flow_id, error, failed),
    )  # fmt: skip


async def _first_started(broker: Broker, w: FlowKeys, flow_id: str, total: int) -> bool:
    """Whether one of the flow's first steps without dependencies left its queue's
    pending or scheduled state."""
    first = [str(i) for i in range(min(total, SUMMARY_FIRST))]

    async def read() -> list[Any]:
        pipe = broker.redis.pipeline(transaction=False)
        pipe.hmget(w.meta, [f"d:{i}" for i in first])
        pipe.hmget(w.tpl, first)
        return list(await pipe.execute())

    deps, tpls = await broker.run(read)
    refs = [
        (decode_value(reply_bytes(t))[0], step_task_id(flow_id, int(i)))
        for i, d, t in zip(first, deps, tpls, strict=True)
        if d is None and t is not None
    ]
    tasks = await read_tasks(broker, refs)
    return any(t is not None and t.state not in ("pending", "scheduled") for t in tasks)


async def list_flows(
    broker: Broker, state: str | None = None, page: int = 1, size: int = 50, *, steps: bool = True
) -> list[FlowInfo]:
    """Flows newest first, ``size`` per page; those past their retention are forgotten.
    ``steps=False``: summaries (``flow_summary``), whatever the flows' sizes; else each
    listed flow is read whole (only those listed: the others are told apart by their
    summaries)."""
    key = flows_key(broker.prefix)
    out: list[FlowInfo] = []
    skip = (page - 1) * size
    start = 0
    while len(out) < size:
        ids = [text(i) for i in await _page(broker, key, start)]
        if not ids:
            break
        start += len(ids)
        for flow_id in ids:
            try:
                info = await flow_summary(broker, flow_id)
                # A summary may say pending where the whole flow says running.
                maybe = (
                    state is None or info.state == state or (state in _OPEN and info.state in _OPEN)
                )
                if steps and maybe:
                    info = await read_flow(broker, flow_id)
            except TaskNotFound:
                await broker.run(lambda f=flow_id: broker.redis.zrem(key, f))  # type: ignore[misc]
                start -= 1
                continue
            if state is not None and info.state != state:
                continue
            if skip:
                skip -= 1
                continue
            out.append(info)
            if len(out) == size:
                break
    return out


async def prune(broker: Broker, count: int = 100) -> int:
    """Forget, in the list of flows, the oldest ones whose retention passed; how many."""
    key = flows_key(broker.prefix)
    oldest = [text(i) for i in await broker.run(lambda: broker.redis.zrange(key, 0, count - 1))]
    if not oldest:
        return 0
    metas = [("EXISTS", FlowKeys(broker.prefix, f).meta) for f in oldest]
    alive = await broker.run(lambda: broker.scripts([], metas))
    gone = [f for f, n in zip(oldest, alive, strict=True) if not int(n)]
    if gone:
        await broker.run(lambda: broker.redis.zrem(key, *gone))
    return len(gone)


async def _page(broker: Broker, key: str, start: int) -> list[Any]:
    return list(await broker.run(lambda: broker.redis.zrevrange(key, start, start + 99)))
