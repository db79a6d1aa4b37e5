"""Workflows on the server (docs/workflows.md): writing one, recording its steps' ends,
releasing the steps they free, reading and cancelling it. Shared by the Client (which
writes flows and releases their first steps), the Inspector and every worker (which
record the ends of the steps they ran and release what those free).

A flow's bookkeeping lives under its own hash tag (``FlowKeys``); its steps are ordinary
tasks in their queues, possibly on other masters. Two hand-overs cross slots, each
through an outbox that any worker drains and whose every entry is idempotent:

* a step's end goes, in the same script as its ack or failure, into its *queue's* outbox;
  draining it runs ``flow_done.lua`` on the flow, which records the end once and pushes
  each step it frees, once, on the *flow's* outbox;
* draining the flow's outbox writes each freed step into its queue under a task id fixed
  by the flow (``<flow id>-<index>``): written twice, the second write is refused as a
  conflict, so a crash between two writes neither loses nor doubles a step.

A flow id with pending hand-overs sits in ``flows_due_key`` until the flow ends, so a
worker sweeping it finishes what a crashed one started.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec

from ._codec import decode_body, decode_value, encode_body, encode_value, split_message
from ._flow import Element, FlowInfo, assemble, compile_flow
from ._options import new_task_id
from ._producer import Producer, outcome
from ._reads import text
from ._redis import scripts
from ._redis.broker import Broker
from ._redis.keys import (
    FlowKeys,
    flow_channel,
    flow_stats_key,
    flows_due_key,
    flows_key,
    queue_keys,
    queues_key,
)
from ._task import State, TaskInfo, from_ms, seconds
from .errors import InvalidOption

DEFAULT_RETENTION = 86400.0
# Fields per HSET and ids per read when writing or releasing a large flow.
CHUNK = 1000
# Options a step cannot have: its id is the flow's to choose, it starts when released.
_STEP_REFUSED = ("task_id", "unique", "process_in", "process_at")
_FLOW_ID = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def step_task_id(flow_id: str, index: int) -> str:
    return f"{flow_id}-{index}"


def valid_flow_id(flow_id: object) -> bool:
    return isinstance(flow_id, str) and bool(_FLOW_ID.fullmatch(flow_id))


def _check_flow_id(flow_id: object) -> str:
    if not isinstance(flow_id, str) or not _FLOW_ID.fullmatch(flow_id):
        raise InvalidOption(f"flow_id must be 1-100 characters of [A-Za-z0-9_.-], got {flow_id!r}")
    return flow_id


# -- writing a flow ------------------------------------------------------------------------


async def write_flow(
    broker: Broker,
    producer: Producer,
    root: Element,
    *,
    flow_id: str | None = None,
    retention: float = DEFAULT_RETENTION,
) -> FlowInfo:
    """Check every step of ``root``, write the flow and release its first steps.

    Nothing is written when a step is refused (``InvalidOption``, ``InvalidPayload``).
    """
    plan = compile_flow(root)
    infos: list[TaskInfo] = []
    flow_id = _check_flow_id(flow_id) if flow_id is not None else new_task_id()
    keep = seconds(retention, "retention")
    now = int(time.time() * 1000)
    w = FlowKeys(broker.prefix, flow_id)
    meta: dict[str, Any] = {
        "id": flow_id,
        "state": "open",
        "total": len(plan.nodes),
        "created": now,
        "retention": max(1, int(keep * 1000)),
        "output": encode_value(plan.output),
    }
    tpl: dict[str, bytes] = {}
    shape: dict[str, bytes] = {}
    children: dict[int, list[int]] = {}
    roots: list[int] = []
    first: list[tuple[str, str, bytes, bool]] = []
    for i, node in enumerate(plan.nodes):
        job = node.job
        refused = [o for o in _STEP_REFUSED if job.options.get(o) is not None]
        if refused:
            raise InvalidOption(
                f"a workflow step cannot have {', '.join(refused)} (step {i}, {job!r})"
            )
        as_payload = bool(node.deps) and not job.has_payload
        p = producer.prepare(
            job.task, job.payload, job.options, now, step=f"{flow_id}:{i}",
            inputs_as_payload=as_payload, task_id=f"{flow_id}-{i}", retention=keep,
        )  # fmt: skip
        info = outcome(p, scripts.WRITTEN)
        assert isinstance(info, TaskInfo)
        if node.deps:
            info.state = State.SCHEDULED.value  # until its dependencies completed
        infos.append(info)
        tpl[str(i)] = encode_value(
            [p.opts.queue, p.opts.task_id, p.args[1], p.laned, as_payload, p.type]
        )
        if node.deps:
            meta[f"d:{i}"] = ",".join(map(str, node.deps))
            meta[f"w:{i}"] = len(node.deps)  # dependencies not completed yet
            shape[str(i)] = encode_value(node.shape)
            for d in node.deps:
                children.setdefault(d, []).append(i)
        else:
            roots.append(i)
            first.append((p.opts.queue, p.opts.task_id, p.args[1], p.laned))
    for d, kids in children.items():
        meta[f"c:{d}"] = ",".join(map(str, kids))
    commands: list[tuple[Any, ...]] = []
    for key, mapping in ((w.meta, meta), (w.tpl, tpl), (w.shape, shape)):
        items = [x for kv in mapping.items() for x in kv]
        commands += [
            ("HSET", key, *items[lo : lo + 2 * CHUNK]) for lo in range(0, len(items), 2 * CHUNK)
        ]
    ids = [str(i) for i in roots]
    # (The first steps are released from the start: flow_done.lua and cancel_flow.lua
    # know them as the steps without dependencies, no entry in `released` each.)
    # Until the client wrote them, the first steps are "due" (a sweep writes them if it
    # died first): a flag, not an outbox entry each, which would cost a removal each.
    commands.append(("HSET", w.meta, "roots", ",".join(ids)))
    commands.append(("ZADD", flows_key(broker.prefix), now, flow_id))
    commands.append(("HINCRBY", flow_stats_key(broker.prefix), "started", 1))
    commands.append(("SADD", flows_due_key(broker.prefix), flow_id))
    exists = await broker.run(lambda: broker.redis.exists(w.meta))
    if exists:
        raise InvalidOption(f"flow id {flow_id!r} is already used by a flow")
    # The flow first, its first steps after: a step must never end before its flow
    # exists (on a cluster, the two are on different masters). Until they are written,
    # the first steps wait on the flow's outbox, where a sweep would find them.
    await broker.run(lambda: broker.scripts([], commands))
    await _send_steps(broker, first, now, [])
    await broker.run(lambda: broker.redis.hdel(w.meta, "roots"))
    return FlowInfo(
        id=flow_id, state="pending", steps=infos, done=0, total=len(infos),
        created_at=from_ms(now),
    )  # fmt: skip


# -- releasing steps -----------------------------------------------------------------------


async def release(broker: Broker, flow_id: str) -> int:
    """Write the steps on the flow's outbox into their queues; how many were written now
    (a step written before, by a crashed or concurrent releaser, counts 0)."""
    w = FlowKeys(broker.prefix, flow_id)
    total = 0
    while True:
        ids = await broker.run(lambda: broker.redis.lrange(w.outbox, 0, CHUNK - 1))
        if not ids:
            return total
        total += await _release(broker, w, [text(i) for i in ids])
        if len(ids) < CHUNK:
            return total


async def _release(broker: Broker, w: FlowKeys, ids: list[str]) -> int:
    async def read_templates() -> list[Any]:
        pipe = broker.redis.pipeline(transaction=False)
        pipe.hmget(w.tpl, ids)
        pipe.hmget(w.shape, ids)
        pipe.hmget(w.meta, [f"d:{i}" for i in ids])
        return list(await pipe.execute())

    tpls, shapes, deps = await broker.run(read_templates)
    needed = sorted({d for ds in deps if ds for d in text(ds).split(",")}, key=int)
    results: dict[int, Any] = {}
    if needed:
        raw = await broker.run(lambda: broker.redis.hmget(w.results, needed))
        # A step whose handler returned None keeps no result: it reads as None.
        results = {int(d): decode_value(reply_bytes(r)) for d, r in zip(needed, raw, strict=True)}
    now = int(time.time() * 1000)
    steps: list[tuple[str, str, bytes, bool]] = []
    for tpl, shp in zip(tpls, shapes, strict=True):
        if tpl is None:
            continue  # the flow expired meanwhile
        queue, task_id, message, is_laned, as_payload, _ = decode_value(tpl)
        if shp is not None:
            message = _with_inputs(message, assemble(decode_value(shp), results), as_payload, now)
        steps.append((queue, task_id, message, is_laned))
    return await _send_steps(broker, steps, now, [scripts.outbox_done(w.outbox, ids)])


async def _send_steps(
    broker: Broker,
    steps: list[tuple[str, str, bytes, bool]],
    now: int,
    cleanup: list[scripts.Call],
    extra: Sequence[tuple[Any, ...]] = (),
) -> int:
    """Write released steps (queue, task id, message, laned) into their queues, then run
    ``cleanup`` (taking them off the outboxes); how many were written now. A step
    written before (by a releaser that died before its cleanup) is refused as a
    conflict: nothing is written twice."""
    by_queue: dict[str, list[Any]] = {}
    laned: dict[str, bool] = {}
    for queue, task_id, message, is_laned in steps:
        by_queue.setdefault(queue, []).extend([task_id, message, 0])
        laned[queue] = laned.get(queue, False) or is_laned
    calls = []
    if not by_queue:
        await _finish_sending(broker, cleanup, extra)
        return 0
    for queue, args in by_queue.items():
        k = queue_keys(broker.prefix, queue)
        for lo in range(0, len(args), 3 * 500):
            calls.append(scripts.enqueue(k, now, False, args[lo : lo + 1500], laned[queue]))
    register = [("SADD", queues_key(broker.prefix), *by_queue)] if by_queue else []
    replies = await broker.run(lambda: broker.scripts(calls, register))
    written = sum(1 for reply in replies[: len(calls)] for r in reply if r == scripts.WRITTEN)
    # Only now off the outboxes: a step is written (or was) before its entry goes.
    await _finish_sending(broker, cleanup, extra)
    return written


async def _finish_sending(
    broker: Broker, cleanup: list[scripts.Call], extra: Sequence[tuple[Any, ...]]
) -> None:
    """The outbox cleanup, then the counters: not as extras of the script calls, which
    ``Broker.scripts`` sends again after loading a script the server forgot (a counter
    must not count twice)."""
    if cleanup:
        await broker.run(lambda: broker.scripts(cleanup))
    if extra:
        await broker.run(lambda: broker.scripts([], extra))


def reply_bytes(value: Any) -> bytes | None:
    """A reply that may be missing (None) or, on a decoding client, text."""
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


def _with_inputs(message: bytes, inputs: Any, as_payload: bool, now: int) -> bytes:
    """A step's stored message with its dependencies' results: as its payload, or as its
    ``inputs`` beside a payload of its own."""
    head, body_bytes = split_message(message)
    body = decode_body(body_bytes)
    if as_payload:
        body.payload = msgspec.Raw(encode_value(inputs))
    else:
        body.inputs = _as_list(inputs)
    body.enqueued_at = now
    return head + encode_body(body)


def _as_list(inputs: Any) -> list[Any]:
    return inputs if isinstance(inputs, list) else [inputs]


# -- the ends of steps ---------------------------------------------------------------------


class End(NamedTuple):
    """The end of a step, as its queue's outbox holds it (``entry``) and parsed."""

    entry: str
    flow_id: str
    step: int  # its index in the flow
    kind: str  # completed, archived, revoked
    value: bytes  # its encoded result (completed) or its error


def parse_end(entry: str, value: bytes = b"") -> End:
    """An outbox entry ``<flow id>:<index>|<kind>[|<error>]``; ``value``: the result of a
    completed step."""
    step, _, rest = entry.partition("|")
    kind, _, error = rest.partition("|")
    flow_id, _, index = step.rpartition(":")
    return End(entry, flow_id, int(index), kind, value if kind == "completed" else error.encode())


async def finish_steps(broker: Broker, queue: str, limit: int = 200) -> int:
    """Record in their flows the step ends in ``queue``'s outbox, and write the steps
    they free; how many ends were drained (the sweep: ends whose worker died between
    its ack and their recording, or whose report it never got to)."""
    k = queue_keys(broker.prefix, queue)
    entries = [text(e) for e in await broker.run(lambda: broker.redis.lrange(k.outbox, -limit, -1))]
    if not entries:
        return 0
    ends = [parse_end(e) for e in reversed(entries)]  # oldest first
    completed = [e for e in ends if e.kind == "completed"]
    if completed:
        ids = [step_task_id(e.flow_id, e.step) for e in completed]
        raw = await broker.run(lambda: broker.redis.hmget(k.results, ids))
        values = {e.entry: reply_bytes(r) or b"" for e, r in zip(completed, raw, strict=True)}
        ends = [e._replace(value=values[e.entry]) if e.kind == "completed" else e for e in ends]
    await record_ends(broker, queue, ends, again=True)
    return len(ends)


async def record_ends(
    broker: Broker, queue: str, ends: Sequence[End], *, again: bool = False
) -> None:
    """Record ``ends`` (of steps in ``queue``) in their flows, write at once the steps
    they free, then take the ends off the queue's outbox. ``again``: they may have been
    recorded before (a sweep): the flows' outboxes are drained too, in case the one who
    recorded them died before writing what they freed."""
    prefix = broker.prefix
    now = int(time.time() * 1000)
    # One call per flow, whatever the number of its steps that ended.
    by_flow: dict[str, list[tuple[int, str, bytes]]] = {}
    for e in ends:
        by_flow.setdefault(e.flow_id, []).append((e.step, e.kind, e.value))
    calls = [
        scripts.flow_done(FlowKeys(prefix, f), flow_channel(prefix, f), items, now)
        for f, items in by_flow.items()
    ]
    replies = [scripts.parse_flow_done(r) for r in await broker.run(lambda: broker.scripts(calls))]
    steps: list[tuple[str, str, bytes, bool]] = []
    taken: list[tuple[str, int]] = []
    for flow_id, r in zip(by_flow, replies, strict=True):
        for index, tpl, shp, deps in r.steps:
            steps.append(_step_from(tpl, shp, deps, now))
            taken.append((flow_id, index))
    k = queue_keys(prefix, queue)
    cleanup = [scripts.outbox_done(k.outbox, [e.entry for e in ends])]
    by_outbox: dict[str, list[str]] = {}
    for f, i in taken:
        by_outbox.setdefault(FlowKeys(prefix, f).outbox, []).append(str(i))
    cleanup += [scripts.outbox_done(key, ids) for key, ids in by_outbox.items()]
    count = [("HINCRBY", flow_stats_key(prefix), r.ended, 1) for r in replies if r.ended]
    await _send_steps(broker, steps, now, cleanup, count)
    if again:
        for flow_id, r in zip(by_flow, replies, strict=True):
            if r.known:
                await release(broker, flow_id)


def _step_from(
    tpl: bytes, shape: bytes, deps: dict[int, bytes], now: int
) -> tuple[str, str, bytes, bool]:
    """A released step, ready to write: its queue, task id, message (with its inputs)
    and whether it waits in a lane."""
    queue, task_id, message, is_laned, as_payload, _ = decode_value(tpl)
    if shape:
        results = {d: decode_value(v or None) for d, v in deps.items()}
        message = _with_inputs(message, assemble(decode_value(shape), results), as_payload, now)
    return queue, task_id, message, is_laned


async def _requeue_roots(broker: Broker, w: FlowKeys) -> None:
    """The first steps of a flow whose client died before writing them: onto the outbox
    (once: the flag goes in the same step, on the flow's own node)."""
    roots = await broker.run(lambda: broker.redis.hget(w.meta, "roots"))
    if roots:
        ids = text(roots).split(",")
        commands = [("RPUSH", w.outbox, *ids), ("HDEL", w.meta, "roots")]
        await broker.run(lambda: broker.scripts([], commands))


async def sweep_due(broker: Broker, count: int = 100) -> int:
    """Release what flows left on their outboxes (a crashed releaser's work); forget
    the flows that ended. How many steps were written."""
    key = flows_due_key(broker.prefix)
    # Through the hot path's connections (a raw command): an idle worker's periodic
    # sweep keeps no extra connection of its own awake.
    (picked,) = await broker.run(lambda: broker.scripts([], [("SRANDMEMBER", key, count)]))
    ids = [text(i) for i in picked or []]
    written = 0
    for flow_id in ids:
        w = FlowKeys(broker.prefix, flow_id)
        state = await broker.run(lambda w=w: broker.redis.hget(w.meta, "state"))  # type: ignore[misc]
        if state is None or text(state) != "open":
            await broker.run(lambda f=flow_id: broker.redis.srem(key, f))  # type: ignore[misc]
            continue
        await _requeue_roots(broker, w)
        written += await release(broker, flow_id)
    return written
