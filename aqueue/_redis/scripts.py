"""The Lua scripts, and one typed function per script that builds its call.

Every server-side state change is a script in ``lua/`` (KEYS and ARGV in its header).
``SCRIPTS`` loads them all once per process. For each script, a function here takes
what the call means (a queue's keys, a worker id, a task id...) and returns the
``Call`` that ``Broker.scripts`` sends: so a script's key order and argument layout are
written in two places only, its Lua header and its function. Where a reply has a
structure, a ``parse_*`` function next to the script's turns it into named values.

The calls on the hot path (``claim``, ``ack``, ``enqueue``) build their tuples directly:
no object per call beyond the call itself.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any, Literal, NamedTuple

from .keys import FlowKeys, QueueKeys

_LUA = resources.files(__package__) / "lua"
_INCLUDE = "-- include: "


class Script:
    """A Lua script from ``lua/``, sent by SHA.

    A line ``-- include: NAME`` is replaced by ``lua/lib/NAME.lua`` (whose own includes
    are expanded the same way), once per script: a script runs alone on the server, so
    the Lua that several scripts share is pasted into each one here, from one file.
    """

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = _expand((_LUA / f"{name}.lua").read_text(), set())
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"Script({self.name!r})"


def _expand(source: str, included: set[str]) -> str:
    out = []
    for line in source.splitlines(keepends=True):
        if not line.startswith(_INCLUDE):
            out.append(line)
            continue
        name = line.removeprefix(_INCLUDE).strip()
        if name not in included:
            included.add(name)
            out.append(_expand((_LUA / "lib" / f"{name}.lua").read_text(), included))
    return "".join(out)


class Scripts:
    """Every script, loaded from disk once per process."""

    def __init__(self) -> None:
        # The worker's and client's.
        self.enqueue = Script("enqueue")
        self.claim = Script("claim")
        self.ack = Script("ack")
        self.fail = Script("fail")
        self.requeue = Script("requeue")
        self.heartbeat = Script("heartbeat")
        self.reap = Script("reap")
        self.orphans = Script("orphans")
        self.janitor = Script("janitor")
        self.forward = Script("forward")
        self.cancel = Script("cancel")
        self.declare = Script("declare")
        self.recount = Script("recount")
        # Workflows'.
        self.flow_done = Script("flow_done")
        self.cancel_flow = Script("cancel_flow")
        self.outbox_done = Script("outbox_done")
        # The Inspector's.
        self.run_now = Script("run_now")
        self.archive = Script("archive")
        self.delete = Script("delete")
        self.drop_queue = Script("drop_queue")
        self.trim_stats = Script("trim_stats")


SCRIPTS = Scripts()

# A script, its keys and its arguments: what ``Broker.scripts`` sends.
Call = tuple[Script, Sequence[str], Sequence[Any]]

# The mode of run_now, archive and delete: one task by id, or a batch of one state.
Mode = Literal["one", "all"]


# -- enqueue -------------------------------------------------------------------------------

# What enqueue.lua answers for a task it wrote, and for a cron tick already enqueued.
WRITTEN = b"ok"
SKIPPED = b"skip"
# The unique digest and lock ttl of a task without a lock, in a "unique" or cron call.
NO_LOCK = ("", 0)


class Refused(NamedTuple):
    """Why enqueue.lua wrote nothing for a task."""

    kind: Literal["conflict", "dup"]
    # conflict: the state of the task that has this id; dup: the id holding the lock.
    detail: str


def enqueue(
    k: QueueKeys, now_ms: int, unique: bool, tasks: Sequence[Any], laned: bool = False
) -> Call:
    """Write tasks of one queue. ``tasks`` holds each task's arguments one after the
    other: ``id, message, due ms (0 = now)``, and with ``unique`` two more each,
    ``unique digest, unique ttl ms`` (``NO_LOCK`` for a task without a lock).
    ``laned``: some task has a priority or a limit key (it waits in its lane)."""
    keys: tuple[str, ...]
    if laned:
        keys = _enqueue_keys(k, cron=False) + k.flow()
    elif unique:
        keys = (k.pending, k.scheduled, k.tasks, k.states, k.bell, k.uniq, k.uniq_exp)
    else:
        keys = _plain_keys(k)
    return (SCRIPTS.enqueue, keys, ["unique" if unique else "plain", now_ms, *tasks])


@lru_cache(maxsize=4096)
def _plain_keys(k: QueueKeys) -> tuple[str, ...]:
    return (k.pending, k.scheduled, k.tasks, k.states, k.bell)


def _enqueue_keys(k: QueueKeys, cron: bool) -> tuple[str, ...]:
    # Unused places hold a key of the queue (the script reads them by position).
    c, log = (k.cron, k.cronlog) if cron else (k.pending, k.pending)
    return (k.pending, k.scheduled, k.tasks, k.states, k.bell, k.uniq, k.uniq_exp, c, log)


def enqueue_cron(
    k: QueueKeys, now_ms: int, entry: str, tick_ms: int, history: int, task: Sequence[Any]
) -> Call:
    """Enqueue.lua in its cron mode: write ``task`` (5 arguments, as with ``unique``)
    unless the ``tick_ms`` of cron ``entry`` was enqueued already (reply ``SKIPPED``),
    and log it in the queue's cronlog, which keeps ``history`` items."""
    keys = _enqueue_keys(k, cron=True) + k.flow()
    return (SCRIPTS.enqueue, keys, ["cron", now_ms, entry, tick_ms, history, *task])


def parse_refused(reply: Any) -> Refused:
    """One task's reply other than ``WRITTEN``: ``[b"conflict", state]`` or
    ``[b"dup", holder id]``."""
    return Refused(reply[0].decode(), reply[1].decode())


# -- the worker's hot path -----------------------------------------------------------------


class ClaimRefused(enum.IntEnum):
    """Why claim.lua claimed nothing."""

    PAUSED = -1  # the queue is paused
    LOST = -2  # the worker holds no live lease on the queue: it must renew it first


# A claimed task: id, token, stored message, retries so far.
ClaimedTask = tuple[bytes, bytes, bytes, int]


class ClaimReply(NamedTuple):
    """What claim.lua claimed, and what held the rest back."""

    tasks: list[ClaimedTask]  # oldest first in each lane, lanes in turn
    wait_ms: int | None  # a rate window has room again in this many ms (None: none waits)
    held_back: int  # lanes (and the queue itself) held back by a limit in this call
    capped: bool  # a limit is full now: the next ack frees a slot of it


_CLAIM_REFUSALS = {int(r): r for r in ClaimRefused}


def claim(k: QueueKeys, lease: str, n: int, worker_id: str, seq: int, now_ms: int) -> Call:
    """Claim up to ``n`` pending tasks into the ``lease`` list of ``worker_id``, with
    tokens numbered from ``seq``, within the queue's limits."""
    keys = (lease, k.states, k.paused, k.leases, k.retried, *k.flow())
    return (SCRIPTS.claim, keys, [n, worker_id, seq, now_ms])


def parse_claim(reply: Any) -> ClaimRefused | ClaimReply:
    """The claimed tasks, or why there are none."""
    if isinstance(reply, int):
        return _CLAIM_REFUSALS[reply]
    items = iter(reply)
    wait_ms, held_back, capped = next(items), next(items), next(items)
    tasks = list(zip(items, items, items, items, strict=False))
    return ClaimReply(tasks, wait_ms if wait_ms >= 0 else None, held_back, bool(capped))


def ack(
    k: QueueKeys, lease: str, now_ms: int, day: str, plain: Sequence[Any], full: Sequence[Any]
) -> Call:
    """Finish successful attempts. ``plain``: ``id, token`` pairs of tasks with no
    retention, result or unique lock; ``full``: the others, 6 values each: ``id, token,
    retention ms, encoded result, unique digest, workflow step``. The reply lists the ids
    whose token was stale (nothing was written for those)."""
    keys = (
        lease, k.tasks, k.states, k.completed, k.results, k.uniq, k.uniq_exp, k.stats,
        k.retried, k.errors, k.failed_at, k.progress, k.cancels, *k.flow(),
    )  # fmt: skip
    return (SCRIPTS.ack, keys, [now_ms, day, len(plain) // 2, *plain, *full])


def fail(
    k: QueueKeys,
    lease: str,
    task_id: str,
    token: str,
    action: str,
    *,
    now_ms: int,
    day: str,
    due_ms: int,
    error: str,
    digest: str,
    counted: bool,
    step: str = "",
) -> Call:
    """End a failed attempt: ``action`` "retry" (counts a retry), "again" (does not),
    "archive" or "revoke". ``due_ms``: the next attempt's, for retry and again;
    ``counted``: a failure in the stats. Replies 1, or 0 if the token was stale."""
    keys = (
        lease, k.tasks, k.states, k.retry, k.archived, k.uniq, k.uniq_exp, k.stats,
        k.retried, k.errors, k.failed_at, k.progress, k.results, k.cancels, *k.flow(),
    )  # fmt: skip
    args = [now_ms, day, task_id, token, action, due_ms, error, digest, 1 if counted else 0, step]
    return (SCRIPTS.fail, keys, args)


# -- the worker's lease and housekeeping -----------------------------------------------------


def heartbeat(ks: Sequence[QueueKeys], worker_id: str, now_ms: int, expiry_ms: int) -> Call:
    """Renew the worker's lease on the queues (of one slot: on a cluster, one queue)
    until ``expiry_ms``. Replies, per queue, 1 if it was live, 0 if it had expired or
    was gone."""
    return (SCRIPTS.heartbeat, tuple(k.leases for k in ks), [worker_id, now_ms, expiry_ms])


def requeue(
    k: QueueKeys, lease: str, worker_id: str, held: Iterable[tuple[str, str]], leaving: bool
) -> Call:
    """Give the ``held`` tasks (id, token) back to the head of the queue; if
    ``leaving``, the rest of the lease list too, and drop the lease. Replies how many
    went back."""
    args: list[Any] = [1 if leaving else 0, worker_id]
    for task_id, token in held:
        args += (task_id, token)
    return (SCRIPTS.requeue, (lease, k.states, k.leases, *k.flow()), args)


class ReapReply(NamedTuple):
    recovered: int  # tasks returned to the queue
    archived: int  # tasks archived (retries spent, or cancelled)
    archived_ids: list[str]


def reap(k: QueueKeys, worker_ids: Sequence[str], now_ms: int, day: str) -> Call:
    """Recover the tasks of those of ``worker_ids`` whose lease really expired."""
    keys = (
        k.leases, k.states, k.archived, k.retried, k.errors, k.failed_at, k.stats,
        k.uniq, k.uniq_exp, k.cancels, k.progress, *k.flow(),
        *(k.lease(w) for w in worker_ids),
    )  # fmt: skip
    return (SCRIPTS.reap, keys, [now_ms, day, *worker_ids])


def parse_reap(reply: Any) -> ReapReply:
    return ReapReply(int(reply[0]), int(reply[1]), [i.decode() for i in reply[2:]])


def orphans(k: QueueKeys, lease: str, held: Sequence[str]) -> Call:
    """Return the ids of a live ``lease`` list the worker does not hold (all but
    ``held``) to the head of the queue. Replies how many went back."""
    return (SCRIPTS.orphans, (lease, k.states, *k.flow()), held)


class JanitorReply(NamedTuple):
    deleted: int  # tasks deleted
    released: int  # expired unique locks dropped
    more: bool  # work is left for another call


def janitor(k: QueueKeys, now_ms: int, max_archived: int, archive_ttl_ms: int, limit: int) -> Call:
    """Delete completed tasks past their retention and archived tasks past the
    archive's age or size, drop expired unique locks: at most ``limit`` of each."""
    keys = (
        k.completed, k.archived, k.tasks, k.states, k.retried, k.errors, k.failed_at,
        k.results, k.progress, k.uniq, k.uniq_exp, k.cancels,
    )  # fmt: skip
    return (SCRIPTS.janitor, keys, [now_ms, max_archived, archive_ttl_ms, limit])


class RecountReply(NamedTuple):
    fixed: int  # limits whose count of taken slots was wrong (now right)
    expired: int  # rate windows dropped (no start in them any more)


def recount(k: QueueKeys, limit: int) -> Call:
    """Count the slots taken per limit again from the active tasks' holds, and drop
    rate windows grown old, at most ``limit`` of them."""
    return (SCRIPTS.recount, k.flow(), [0, limit])


def parse_recount(reply: Any) -> RecountReply:
    return RecountReply(int(reply[0]), int(reply[1]))


def parse_janitor(reply: Any) -> JanitorReply:
    return JanitorReply(int(reply[0]), int(reply[1]), bool(int(reply[2])))


class ForwardReply(NamedTuple):
    moved: int  # due tasks moved to pending
    next_ms: int | None  # when the next scheduled or retry task is due; None: none is


def forward(k: QueueKeys, now_ms: int, limit: int) -> Call:
    """Move due scheduled and retry tasks to pending, at most ``limit`` of each."""
    return (SCRIPTS.forward, (k.scheduled, k.retry, k.states, *k.flow()), [now_ms, limit])


def parse_forward(reply: Any) -> ForwardReply:
    nxt = int(reply[1])
    return ForwardReply(int(reply[0]), nxt if nxt >= 0 else None)


def declare(k: QueueKeys, limits: Sequence[tuple[str, str]]) -> Call:
    """Replace the queue's declared limits with ``limits`` (field, encoded limit):
    ``"q"`` for the queue's own, ``"t:<type>"`` for a task type's."""
    args = [part for pair in limits for part in pair]
    return (SCRIPTS.declare, k.flow(), args)


# -- the client's and the inspector's --------------------------------------------------------


def cancel(k: QueueKeys, task_id: str, now_ms: int) -> Call:
    """Cancel a task: archive it if it waits, mark it if it runs. Reply: see
    ``parse_state``."""
    keys = (
        k.states, k.scheduled, k.retry, k.archived, k.errors, k.failed_at, k.uniq,
        k.uniq_exp, k.cancels, *k.flow(),
    )  # fmt: skip
    return (SCRIPTS.cancel, keys, [now_ms, task_id])


def parse_state(reply: Any) -> str | None:
    """A task's state before a call to cancel or a "one" mode (``@<token>`` or
    ``active`` for an active task), or None when there is no such task."""
    if reply is None:
        return None
    return reply.decode() if isinstance(reply, bytes) else str(reply)


class BulkReply(NamedTuple):
    moved: int  # tasks moved (archived, deleted, run)
    taken: int  # ids taken off the source, stale entries included
    ids: list[str]  # the ids moved (archive and delete; run_now lists none)


def run_now(k: QueueKeys, mode: Mode, target: str, limit: int = 0) -> Call:
    """Move to pending one scheduled, retry or archived task (``target``: its id), or
    all of one state (``target``: the state, at most ``limit`` per call)."""
    keys = (k.states, k.scheduled, k.retry, k.archived, *k.flow())
    return (SCRIPTS.run_now, keys, [mode, target, limit])


def archive(k: QueueKeys, mode: Mode, target: str, now_ms: int, limit: int = 0) -> Call:
    """Archive one pending, scheduled or retry task, or all of one state (as
    ``run_now``)."""
    keys = (
        k.states, k.scheduled, k.retry, k.archived, k.uniq, k.uniq_exp, *k.flow(),
    )  # fmt: skip
    return (SCRIPTS.archive, keys, [mode, target, now_ms, limit])


def delete(k: QueueKeys, mode: Mode, target: str, limit: int = 0) -> Call:
    """Delete one task that is not active, or all of one state (as ``run_now``)."""
    keys = (
        k.states, k.scheduled, k.retry, k.archived, k.completed, k.retried, k.errors,
        k.failed_at, k.results, k.progress, k.uniq, k.uniq_exp, k.cancels, *k.flow(),
    )  # fmt: skip
    return (SCRIPTS.delete, keys, [mode, target, limit])


def parse_bulk(reply: Any) -> BulkReply:
    """The reply of run_now, archive or delete in mode "all"."""
    return BulkReply(int(reply[0]), int(reply[1]), [i.decode() for i in reply[2:]])


def drop_queue(k: QueueKeys, leases: Sequence[str], force: bool) -> Call:
    """Remove every key of the queue, ``leases`` (its workers' lease lists) included,
    unless it holds tasks and not ``force``. Reply: see ``parse_drop_queue``."""
    # The declared limits stay: they are the workers' declaration, not the queue's data.
    others = [key for key in k.fixed() if key not in (k.states, k.pending, k.limits)]
    return (SCRIPTS.drop_queue, [k.states, k.pending, *others, *leases], [1 if force else 0])


def parse_drop_queue(reply: Any) -> int:
    """How many tasks kept the queue from being dropped; 0 when it was dropped."""
    return max(0, -int(reply))


def trim_stats(k: QueueKeys, oldest_day: str) -> Call:
    """Drop the queue's per-day counters of days before ``oldest_day`` (YYYY-MM-DD)."""
    return (SCRIPTS.trim_stats, (k.stats,), [oldest_day])


# -- workflows ---------------------------------------------------------------------------


class FlowDone(NamedTuple):
    recorded: int  # ends that were news (not repeated reports)
    ended: str  # the flow's final state if it ended with them, else ""
    released: int  # steps released by it (pushed on the flow's outbox)
    known: bool = True  # False: no such flow (its retention passed)
    # Per step released: index, template, inputs' shape (b"" = none), and its
    # dependencies' results as {index: encoded result (b"" = none)}.
    steps: tuple[tuple[int, bytes, bytes, dict[int, bytes]], ...] = ()


def flow_done(
    w: FlowKeys, channel: str, ends: Sequence[tuple[int, str, bytes]], now_ms: int
) -> Call:
    """Record that steps ended: per end, its index, how (completed, archived, revoked)
    and its result or error; release the steps waiting for them."""
    args: list[Any] = [now_ms]
    for end in ends:
        args += end
    return (SCRIPTS.flow_done, (*w.all(), channel), args)


def parse_flow_done(reply: Any) -> FlowDone:
    if isinstance(reply, int):
        return FlowDone(0, "", 0, known=False)
    steps = []
    for item in reply[3:]:
        rest = iter(item[3:])
        deps = {int(d): v for d, v in zip(rest, rest, strict=True)}
        steps.append((int(item[0]), item[1], item[2], deps))
    ended = reply[1].decode() if isinstance(reply[1], bytes) else ""
    return FlowDone(int(reply[0]), ended, int(reply[2]), steps=tuple(steps))


def cancel_flow(w: FlowKeys, channel: str, now_ms: int) -> Call:
    """Cancel a workflow: its steps not released are archived; the reply lists those in
    their queues (to cancel), or is -1 (unknown flow) or 0 (ended already)."""
    return (SCRIPTS.cancel_flow, (*w.all(), channel), [now_ms])


def outbox_done(outbox: str, entries: Sequence[str]) -> Call:
    """Take handled ``entries`` off ``outbox`` (a queue's or a flow's)."""
    return (SCRIPTS.outbox_done, (outbox,), list(entries))
