"""The soak's judge: reads the record server and the server under test once every worker
has stopped, and lists every broken promise.

What it holds the run to (issue 18):

* nothing lost: every task whose enqueue returned ended ``completed`` (or ``archived``,
  reported with its reason), and its handler finished at least once;
* nothing completed twice: per queue, the successful attempts the server counted equal
  the tasks it holds completed; a task's handler started again only where a fault on
  the process that ran it before (or on the server) explains it;
* workflows: no step started before each of its dependencies finished, each step got
  its dependencies' results, every flow completed;
* limits: never more than ``TENANT_SLOTS`` runs of one tenant at once, never more than
  ``RATE.limit`` starts of the rated task in a window of ``RATE.per``;
* nothing left behind: no lease list, no lease, no active state, no held slot, no
  unique lock, no pending or ready entry, no task without its state (or the reverse),
  no flow bookkeeping left over, no key of an unknown family that would never expire;
* cron: no tick enqueued twice;
* graceful shutdowns ended (exit 0).

Why the limit checks are sound: a handler records its start after its claim and its
finish before its ack, so each recorded run lies inside the time its slot was held;
runs of a process that was killed, stopped or cut off end there (its lease may have
been reaped and the slot freed while it was frozen: fencing, not the limit, governs it
then). A start is recorded a little after its claim; rate windows are judged
``SLACK`` seconds shorter than ``per``, and starts just after a fault on their process
(late replies) are left out.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from aqueue._redis.keys import QueueKeys

from .app import CRON_ENTRY, QUEUES, RATE, TENANT_SLOTS
from .plan import Done
from .record import Enqueued, Event, read_enqueued, read_events

PREFIX = "aq"
SLACK = 0.5  # seconds: how late a start may be recorded after its claim
NET = ("cut", "stall", "slow")
_QUEUE_FIELDS = set(QueueKeys.__slots__) - {"base"}
_FLOW_FIELDS = {"meta", "tpl", "shape", "ended", "results", "errors", "released", "outbox"}
_GLOBAL = {"queues", "workers", "leases", "flows", "flows:due", "flows:stats"}


@dataclass
class Verdict:
    figures: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.violations.append(what)

    @property
    def ok(self) -> bool:
        return not self.violations


class Oracle:
    def __init__(
        self,
        server: aioredis.Redis,
        record: aioredis.Redis,
        faults: list[Done],
        *,
        pid_slot: dict[int, int] | None = None,
        lease_ttl: float = 6.0,
    ) -> None:
        self.s = server  # decode_responses=True
        self.record = record
        self.faults = [f for f in faults if not f.skipped]
        self.pid_slot = pid_slot or {}
        self.lease_ttl = lease_ttl
        self.v = Verdict()

    async def judge(self) -> Verdict:
        events = await read_events(self.record)
        enqueued = await read_enqueued(self.record)
        states = {q: await hash_of(self.s, QueueKeys(PREFIX, q).states) for q in QUEUES}
        self.v.figures["enqueued"] = len(enqueued)
        self.v.figures["handler starts"] = sum(e.kind == "s" for e in events)
        self._lost(enqueued, states, events)
        await self._completions(states)
        self._reruns(events)
        await self._flows(enqueued, events)
        self._tenants(events)
        self._rate(events)
        await self._leftovers(states)
        await self._cron(states)
        for d in self.faults:
            if d.kind == "term" and not d.detail.startswith("exit code 0"):
                self.v.fail(f"a graceful stop of slot {d.slot} did not end well: {d.detail}")
        return self.v

    # -- nothing lost -------------------------------------------------------------------

    def _lost(
        self, enqueued: list[Enqueued], states: dict[str, dict[str, str]], events: list[Event]
    ) -> None:
        finished = {e.id for e in events if e.kind == "f"}
        archived = 0
        for e in enqueued:
            if e.kind == "flow":
                continue  # judged in _flows
            state = states.get(e.queue, {}).get(e.id)
            if state == "archived":
                archived += 1
                self.v.fail(f"task {e.id} ({e.kind}) ended archived")
            elif state != "completed":
                self.v.fail(f"task {e.id} ({e.kind}, queue {e.queue}) lost: state {state!r}")
            elif e.id not in finished:
                self.v.fail(f"task {e.id} ({e.kind}) completed but its handler never finished")
        self.v.figures["archived"] = archived

    async def _completions(self, states: dict[str, dict[str, str]]) -> None:
        """Each successful ack adds one to ``p`` and nothing to ``f``; every completed
        task is kept (retention): so ``p - f`` equals the completed tasks, or some task
        was acked twice (or an ack was lost)."""
        total = 0
        for q in QUEUES:
            stats = await hash_of(self.s, QueueKeys(PREFIX, q).stats)
            acks = int(stats.get("p", 0)) - int(stats.get("f", 0))
            completed = sum(v == "completed" for v in states[q].values())
            total += completed
            if acks != completed:
                self.v.fail(
                    f"queue {q}: {acks} successful attempts counted, {completed} tasks completed"
                )
        self.v.figures["completed"] = total

    # -- nothing run twice without cause -----------------------------------------------

    def _hits(self, d: Done, pid: int) -> bool:
        """Whether fault ``d`` hit process ``pid``: it was signalled, or the fault was
        on the path of its slot (whichever process ran there), or on the server."""
        if d.kind == "server" or pid in d.pids:
            return True
        return d.kind in NET and self.pid_slot.get(pid) == d.slot

    def _touched(self, pid: int, t0: float, t1: float) -> Done | None:
        """A fault on ``pid`` (or its path, or the server) that was active, or whose
        effect could still be felt, at some time in [t0, t1]: a lease whose renewals
        failed during a fault lapses up to ``lease_ttl`` after it ended."""
        for d in self.faults:
            if self._hits(d, pid) and d.t0 <= t1 and d.t1 + self.lease_ttl >= t0:
                return d
        return None

    def _reruns(self, events: list[Event]) -> None:
        starts: dict[str, list[Event]] = defaultdict(list)
        for e in events:
            if e.kind == "s":
                starts[e.id].append(e)
        again: defaultdict[str, int] = defaultdict(int)
        for runs in starts.values():
            for before, after in itertools.pairwise(runs):
                cause = self._touched(before.pid, before.t - 0.5, after.t)
                if cause is None:
                    self.v.fail(
                        f"task {after.id} ({after.type}, {after.key or '-'}) started again "
                        f"(pid {after.pid}, retry {after.retry}, at {after.t:.3f}) after a "
                        f"start by pid {before.pid} at {before.t:.3f} with no fault to explain it"
                    )
                else:
                    again[cause.kind] += 1
        finishes: defaultdict[str, int] = defaultdict(int)
        for e in events:
            if e.kind == "f":
                finishes[e.id] += 1
        self.v.figures["runs again, by the fault that explains it"] = dict(again)
        self.v.figures["handlers finished twice or more"] = sum(n > 1 for n in finishes.values())

    # -- workflows ----------------------------------------------------------------------

    async def _flows(self, enqueued: list[Enqueued], events: list[Event]) -> None:
        by_key: dict[str, list[Event]] = defaultdict(list)
        for e in events:
            if e.key and "/" in e.key:
                by_key[e.key].append(e)
        flows = [e for e in enqueued if e.kind == "flow"]
        done = 0
        for f in flows:
            state = await self.s.hget(f"{PREFIX}:{{f:{f.id}}}:meta", "state")
            if state == "completed":
                done += 1
            else:
                self.v.fail(f"flow {f.id} ended {state!r}, not completed")
            for name, deps in f.deps.items():
                mine = by_key[f"{f.id}/{name}"]
                if not any(e.kind == "f" for e in mine):
                    self.v.fail(f"flow {f.id}: step {name} never finished")
                for s in (e for e in mine if e.kind == "s"):
                    if s.inputs != deps:
                        self.v.fail(
                            f"flow {f.id}: step {name} got inputs {s.inputs}, expected {deps}"
                        )
                    for d in deps:
                        first = min(
                            (e.seq for e in by_key[f"{f.id}/{d}"] if e.kind == "f"), default=None
                        )
                        if first is None or first > s.seq:
                            self.v.fail(f"flow {f.id}: step {name} started before {d} finished")
        self.v.figures["flows completed"] = f"{done} of {len(flows)}"

    # -- limits -------------------------------------------------------------------------

    def _runs(self, events: list[Event], task_type: str) -> list[tuple[float, float, Event]]:
        """Each recorded run of ``task_type``: (start, end, start event)."""
        open_: dict[tuple[str, int], Event] = {}
        out: list[tuple[float, float, Event]] = []
        for e in events:
            if e.type != task_type:
                continue
            k = (e.id, e.pid)
            if e.kind == "s":
                open_[k] = e
            elif k in open_:
                s = open_.pop(k)
                out.append((s.t, self._cut(s, e.t), s))
        for s in open_.values():  # no finish: its process was killed, stopped or cut off
            out.append((s.t, self._cut(s, s.t), s))
        return out

    def _cut(self, s: Event, end: float) -> float:
        """Where a run stops counting: its finish, or the first fault on its process."""
        for d in self.faults:
            if d.kind != "server" and self._hits(d, s.pid) and s.t <= d.t0 < end:
                end = d.t0
        return end

    def _tenants(self, events: list[Event]) -> None:
        worst = 0
        per: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for start, end, s in self._runs(events, "soak:tenant"):
            per[s.key] += [(start, 1), (end, -1)]
        for key, edges in per.items():
            running = 0
            for t, step in sorted(edges, key=lambda x: (x[0], x[1])):  # ends first
                running += step
                worst = max(worst, running)
                if running > TENANT_SLOTS:
                    self.v.fail(f"tenant {key}: {running} runs at once at {t:.3f}")
        self.v.figures["tenant runs at once, most"] = f"{worst} (limit {TENANT_SLOTS})"

    def _rate(self, events: list[Event]) -> None:
        window = RATE.per - SLACK
        starts = [e for e in events if e.type == "soak:rated" and e.kind == "s"]
        kept = sorted(e.t for e in starts if self._touched(e.pid, e.t - 1.0, e.t) is None)
        worst, lo = 0, 0
        for hi, t in enumerate(kept):
            while kept[lo] <= t - window:
                lo += 1
            worst = max(worst, hi - lo + 1)
        if worst > RATE.limit:
            self.v.fail(f"rate: {worst} starts within {window} s (limit {RATE.limit}/{RATE.per} s)")
        self.v.figures["rated starts in a window, most"] = (
            f"{worst} in {window} s (limit {RATE.limit} per {RATE.per} s; {len(kept)} judged)"
        )

    # -- nothing left behind ------------------------------------------------------------

    async def _leftovers(self, states: dict[str, dict[str, str]]) -> None:
        s = self.s
        for q in QUEUES:
            k = QueueKeys(PREFIX, q)
            active = [i for i, v in states[q].items() if v.startswith("@")]
            if active:
                self.v.fail(f"queue {q}: {len(active)} tasks still active, e.g. {active[0]}")
            final = ("completed", "archived")
            waiting = [i for i, v in states[q].items() if v not in final and v[:1] != "@"]
            if waiting:
                self.v.fail(f"queue {q}: {len(waiting)} tasks not final, e.g. {waiting[0]}")
            ids = set(strs(await s.hkeys(k.tasks)))
            if ids - states[q].keys():
                self.v.fail(f"queue {q}: {len(ids - states[q].keys())} tasks without a state")
            if states[q].keys() - ids:
                self.v.fail(f"queue {q}: {len(states[q].keys() - ids)} states without a task")
            sizes = {
                "pending": await s.llen(k.pending),
                "ready": await s.zcard(k.ready),
                "laneof": await s.hlen(k.laneof),
                "scheduled": await s.zcard(k.scheduled),
                "retry": await s.zcard(k.retry),
                "leases": await s.zcard(k.leases),
                "hold": await s.hlen(k.hold),
                "uniq": await s.hlen(k.uniq),
                "cancels": await s.scard(k.cancels),
                "outbox": await s.llen(k.outbox),
            }
            for name, n in sizes.items():
                if n:
                    self.v.fail(f"queue {q}: {n} entries left in {name}")
            if sizes["leases"]:
                left = strs(await s.zrange(k.leases, 0, -1))
                self.v.fail(f"queue {q}: leases of {left} left (none may outlive its worker)")
            running = await hash_of(s, k.running)
            held = {f: v for f, v in running.items() if v not in ("0", "")}
            if held:
                self.v.fail(f"queue {q}: limit slots still held: {held}")
            async for key in s.scan_iter(match=f"{k.base}l:*"):
                n = await s.llen(key)
                self.v.fail(f"queue {q}: lease list {key!r} left ({n} ids)")
        if await s.scard(f"{PREFIX}:flows:due"):
            self.v.fail("flows still due to be drained (aq:flows:due)")
        await self._orphans()

    async def _orphans(self) -> None:
        flows = set(await _members(self.s, f"{PREFIX}:flows"))
        unknown: list[str] = []
        async for key in self.s.scan_iter(match=f"{PREFIX}:*"):
            rest = key[len(PREFIX) + 1 :]
            if rest.startswith("{f:"):
                flow_id, _, name = rest[3:].partition("}:")
                if flow_id not in flows or name not in _FLOW_FIELDS:
                    unknown.append(key)
                elif name == "outbox":
                    self.v.fail(f"flow {flow_id}: released steps never written ({key})")
            elif rest.startswith("{"):
                queue, _, name = rest[1:].partition("}:")
                if not (name in _QUEUE_FIELDS or name.startswith("l:")) or queue not in QUEUES:
                    unknown.append(key)
            elif rest not in _GLOBAL and not rest.startswith("worker:"):
                unknown.append(key)
        for key in unknown:
            if await self.s.ttl(key) < 0:  # never expires
                self.v.fail(f"orphan key {key}")
        self.v.figures["keys of an unknown family"] = len(unknown)

    # -- cron ---------------------------------------------------------------------------

    async def _cron(self, states: dict[str, dict[str, str]]) -> None:
        log = strs(await self.s.lrange(QueueKeys(PREFIX, "default").cronlog, 0, -1))
        ticks: defaultdict[str, list[str]] = defaultdict(list)
        for line in log:
            entry, tick, task_id = line.split("|")
            if entry == CRON_ENTRY:
                ticks[tick].append(task_id)
        for tick, ids in ticks.items():
            if len(ids) > 1:
                self.v.fail(f"cron tick {tick} enqueued {len(ids)} times: {ids}")
            for i in ids:
                if states["default"].get(i) != "completed":
                    self.v.fail(f"cron tick {tick}: task {i} ended {states['default'].get(i)!r}")
        self.v.figures["cron ticks"] = len(ticks)


async def _members(r: aioredis.Redis, key: str) -> list[str]:
    return strs(await r.zrange(key, 0, -1))


def strs(values: Any) -> list[str]:
    """redis-py's replies are typed as unions; the server under test is read with
    ``decode_responses=True``."""
    return [str(v) for v in values]


async def hash_of(r: aioredis.Redis, key: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in (await r.hgetall(key)).items()}
