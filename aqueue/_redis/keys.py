"""The Redis key layout. Every key of one queue carries the queue's hash tag.

Per queue ``q`` (prefix ``aq`` by default), all under the tag ``{q}`` so one queue
lives in one Redis Cluster slot and every script touches one slot only:

===============  =====  ====================================================
``pending``      LIST   ids waiting to run; new ids LPUSHed, claims take the RIGHT
``l:<worker>``   LIST   one worker's lease list (claimed, not yet acked)
``leases``       ZSET   worker id -> lease expiry (ms)
``tasks``        HASH   id -> stored message (see ``_codec``)
``states``       HASH   id -> state; ``@<token>`` while active
``scheduled``    ZSET   id -> due time (ms)
``retry``        ZSET   id -> next attempt (ms)
``archived``     ZSET   id -> archive time (ms)
``completed``    ZSET   id -> expiry (ms) of a kept result
``results``      HASH   id -> encoded result
``retried``      HASH   id -> retries so far
``errors``       HASH   id -> last error
``failed_at``    HASH   id -> last failure (ms)
``progress``     HASH   id -> encoded progress
``uniq``         HASH   unique digest -> id holding the lock
``uniq_exp``     ZSET   unique digest -> lock expiry (ms)
``paused``       STRING exists while paused
``stats``        HASH   ``p``/``f`` totals, ``p:<day>``/``f:<day>`` per UTC day
``cancels``      SET    ids of active tasks whose cancellation was asked
``cron``         HASH   cron entry -> last tick enqueued (ms)
``crondef``      HASH   cron entry -> its definition (spec, tz, task), for the Inspector
``cronlog``      LIST   recent cron enqueues ``<entry>|<tick ms>|<id>``, newest first
``bell``         LIST   at most one token: an idle worker's blocking claim pops it
``ready``        ZSET   flow control: pending tasks in lanes, ``<lane>\1<seq><id>``
``laneof``       HASH   id -> its member of ``ready``
``lanes``        HASH   lane -> ``r`` (in turn), ``c`` (waits for a slot), ``w``
                        (waits for its rate window); ``#...`` counters
``rot``          ZSET   lanes in turn: priority first, then turn
``wait``         ZSET   lane -> when its rate window lets it go on (server ms)
``running``      HASH   limit -> tasks holding one of its slots; ``#held``
``hold``         HASH   active id -> the limits whose slots it holds
``rlog``         ZSET   recent starts per rate limit, ``<limit>\1<ms>:<n>``
``rlim``         ZSET   rate limit -> when all its logged starts are old
``limits``       HASH   the declared limits: ``q`` (the queue's), ``t:<type>``
``outbox``       LIST   ends of workflow steps not yet recorded in their flow,
                        ``<flow id>:<index>|<completed|archived|revoked>``
===============  =====  ====================================================

Flow control (docs/flow-control.md) keeps a task of priority 0 without a limit key, of
a type without limits, in ``pending`` as before; any other pending task waits in its
*lane* (priority, limited type or "", limit key) inside ``ready``, and the claim script
serves the lanes in turn (``rot``), highest priority first. ``pending`` counts as the
lane ``0\2\2``.

Task data lives in per-queue hashes rather than one key per task, so that a script
which claims tasks it cannot name in advance still declares every key it touches.
Outside any queue, written with plain commands, never from a script:
``<prefix>:queues`` (SET of queue names); the worker registry ``<prefix>:workers`` (ZSET
worker id -> expiry) with one expiring ``<prefix>:worker:<id>`` (STRING) per live worker;
and the pub/sub channel ``<prefix>:cancel`` (messages ``"<queue>|<id>"`` that wake the
worker running a cancelled task).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from functools import lru_cache


class QueueKeys:
    """The names of one queue's keys."""

    __slots__ = (
        "archived",
        "base",
        "bell",
        "cancels",
        "completed",
        "cron",
        "crondef",
        "cronlog",
        "errors",
        "failed_at",
        "hold",
        "laneof",
        "lanes",
        "leases",
        "limits",
        "outbox",
        "paused",
        "pending",
        "progress",
        "ready",
        "results",
        "retried",
        "retry",
        "rlim",
        "rlog",
        "rot",
        "running",
        "scheduled",
        "states",
        "stats",
        "tasks",
        "uniq",
        "uniq_exp",
        "wait",
    )

    def __init__(self, prefix: str, queue: str) -> None:
        b = self.base = f"{prefix}:{{{queue}}}:"
        self.pending = b + "pending"
        self.leases = b + "leases"
        self.tasks = b + "tasks"
        self.states = b + "states"
        self.scheduled = b + "scheduled"
        self.retry = b + "retry"
        self.archived = b + "archived"
        self.completed = b + "completed"
        self.results = b + "results"
        self.retried = b + "retried"
        self.errors = b + "errors"
        self.failed_at = b + "failed_at"
        self.progress = b + "progress"
        self.uniq = b + "uniq"
        self.uniq_exp = b + "uniq_exp"
        self.paused = b + "paused"
        self.stats = b + "stats"
        self.cancels = b + "cancels"
        self.cron = b + "cron"
        self.crondef = b + "crondef"
        self.cronlog = b + "cronlog"
        self.bell = b + "bell"
        self.ready = b + "ready"
        self.laneof = b + "laneof"
        self.lanes = b + "lanes"
        self.rot = b + "rot"
        self.wait = b + "wait"
        self.running = b + "running"
        self.hold = b + "hold"
        self.rlog = b + "rlog"
        self.rlim = b + "rlim"
        self.limits = b + "limits"
        self.outbox = b + "outbox"

    def flow(self) -> tuple[str, ...]:
        """The keys of flow control that every script moving a pending task declares,
        in the order ``lua/lib/flow.lua``'s ``flow_keys`` reads them."""
        return (
            self.pending, self.tasks, self.ready, self.laneof, self.lanes, self.rot,
            self.wait, self.running, self.hold, self.rlog, self.rlim, self.limits, self.bell,
            self.outbox,
        )  # fmt: skip

    def lease(self, worker_id: str) -> str:
        return f"{self.base}l:{worker_id}"

    def fixed(self) -> list[str]:
        """Every key of the queue but the lease lists (one per worker)."""
        values = (getattr(self, name) for name in QueueKeys.__slots__ if name != "base")
        return [v for v in values if isinstance(v, str) and v.startswith(self.base)]


@lru_cache(maxsize=4096)
def queue_keys(prefix: str, queue: str) -> QueueKeys:
    return QueueKeys(prefix, queue)


def queues_key(prefix: str) -> str:
    return f"{prefix}:queues"


def lease_index_key(prefix: str) -> str:
    """ZSET worker id -> expiry (ms) of its leases, renewed by its heartbeat and kept
    ``LEASE_INDEX_GRACE`` ms past it: the reapers learn from it that a worker died, in one
    command whatever the number of queues (``_worker/reaper.py``)."""
    return f"{prefix}:leases"


# How long (ms) a dead worker stays in the lease index: every reaper passes in that time.
LEASE_INDEX_GRACE = 60_000


def workers_key(prefix: str) -> str:
    """ZSET worker id -> expiry (ms) of its registration, renewed by its heartbeat."""
    return f"{prefix}:workers"


def worker_key(prefix: str, worker_id: str) -> str:
    """STRING: msgpack map of the worker's host, pid, queues, concurrency, started_at."""
    return f"{prefix}:worker:{worker_id}"


def cancel_channel(prefix: str) -> str:
    return f"{prefix}:cancel"


def schedule_channel(prefix: str) -> str:
    """Pub/sub: ``"<queue>|<due ms>"`` when a delayed task is written, so workers can
    wake their forwarder for it instead of polling."""
    return f"{prefix}:schedule"


def done_channel(prefix: str, queue: str) -> str:
    """Pub/sub, per queue: ``done_notice(kind, ids)`` when tasks of the queue complete
    (kept results), end archived, revoked or deleted, or report progress; what
    ``Client.result`` waits on."""
    return f"{prefix}:{{{queue}}}:done"


class Done(enum.StrEnum):
    """What a notice on a queue's done channel says happened to the tasks it names."""

    COMPLETED = "completed"  # succeeded, result kept
    ARCHIVED = "archived"  # failed for good, cancelled, or archived by an operator
    REVOKED = "revoked"  # dropped by its handler
    DELETED = "deleted"  # deleted by an operator
    PROGRESS = "progress"  # not final: its handler reported progress


def done_notice(kind: Done, ids: Iterable[str]) -> str:
    """The message of a notice on the done channel: ``"<kind>|<id>[,<id>...]"``."""
    return f"{kind}|{','.join(ids)}"


def done_ids(message: bytes) -> list[bytes]:
    """The task ids a done notice names."""
    return message.partition(b"|")[2].split(b",")


def lane_member_id(member: bytes) -> str:
    """The task id in a member of a queue's ``ready`` set: ``<lane>\\1<16-digit seq><id>``
    (lib/flow.lua)."""
    return member[member.index(b"\1") + 17 :].decode()


class FlowKeys:
    """The keys of one workflow, under its own hash tag ``{f:<flow id>}``: a flow's
    steps may live in queues on other masters, its bookkeeping lives here.

    ===========  =====  ==============================================================
    ``meta``     HASH   state, total, created/completed ms, retention, error; per step
                        ``d:<i>``/``c:<i>`` the steps it waits for / that wait for it
                        (comma-separated), ``w:<i>`` how many of those still run
    ``tpl``      HASH   step -> what to enqueue when it is released (msgpack)
    ``shape``    HASH   step -> the shape of its inputs (msgpack)
    ``ended``    HASH   step -> how it ended (``completed``, ``archived``, ...)
    ``results``  HASH   step -> its encoded result (completed steps)
    ``errors``   HASH   step -> why it failed, or which step's failure archived it
    ``released`` SET    steps released (written to their queue, or about to be); the
                        steps without dependencies are released from the start
    ``outbox``   LIST   steps released but not yet written to their queue
    ===========  =====  ==============================================================
    """

    __slots__ = ("base", "ended", "errors", "meta", "outbox", "released", "results", "shape", "tpl")

    def __init__(self, prefix: str, flow_id: str) -> None:
        b = self.base = f"{prefix}:{{f:{flow_id}}}:"
        self.meta = b + "meta"
        self.tpl = b + "tpl"
        self.shape = b + "shape"
        self.ended = b + "ended"
        self.results = b + "results"
        self.errors = b + "errors"
        self.released = b + "released"
        self.outbox = b + "outbox"

    def all(self) -> tuple[str, ...]:
        return (
            self.meta, self.tpl, self.shape, self.ended, self.results, self.errors,
            self.released, self.outbox,
        )  # fmt: skip


def flows_key(prefix: str) -> str:
    """ZSET flow id -> creation time (ms): every flow, for ``Inspector.flows``."""
    return f"{prefix}:flows"


def flows_due_key(prefix: str) -> str:
    """SET of flow ids that may have released steps not yet written to their queues
    (a flow's ``outbox``): any worker drains them."""
    return f"{prefix}:flows:due"


def flow_stats_key(prefix: str) -> str:
    """HASH: flows started, and ended per final state (completed, failed, cancelled),
    counted by whoever saw it happen (for metrics: a crash may miss one)."""
    return f"{prefix}:flows:stats"


def flow_channel(prefix: str, flow_id: str) -> str:
    """Pub/sub: a message when the flow ends (what ``Client.result`` of a flow waits on)."""
    return f"{prefix}:{{f:{flow_id}}}:end"
