"""The admin commands of ``aqueue``: ``stats``, ``workers``, ``limits``, ``cron``, ``queue``
and ``task`` (``flow``'s are in ``flows``).

Each command opens an ``Inspector`` on ``--url`` (else ``$AQUEUE_URL``, else the local
default), prints an aligned table or ``key: value`` lines, or JSON with ``--json``, and
exits 0; an error (server down, unknown queue or task, a refused move) exits 1 with one
``aqueue: error:`` line naming the bad value; bad arguments exit 2 with the usage.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TypeAlias

import anyio
import msgspec
import redis.exceptions as rexc

from .._cancel import cancel_task
from .._format import duration_cell, either, size
from .._inspector import Inspector
from .._limits import LimitInfo
from .._reads import read_eviction_policy, read_unknown_types
from .._redis.broker import DEFAULT_URL, redacted
from .._task import ACTION_STATES, Action, DailyStats, QueueInfo, State, TaskInfo
from ..errors import AqueueError, QueueNotEmpty, QueueNotFound
from . import flows
from .args import positive_int, positive_seconds, queue_name
from .output import (
    ago,
    attempt,
    fields,
    last_error,
    or_dash,
    percent,
    plural,
    print_json,
    report,
    short,
    table,
    today,
    weights,
    when,
)

Command = Callable[[Inspector, argparse.Namespace], Awaitable[None]]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

STATES = [s.value for s in State]


# -- the parser ----------------------------------------------------------------------------


def add_commands(sub: Subparsers) -> None:
    """Add the admin commands to the ``aqueue`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"server URL (default: $AQUEUE_URL, else {DEFAULT_URL})")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    common.add_argument(
        "--timeout", type=positive_seconds, default=5.0, help="seconds to wait for the server (5)"
    )

    def leaf(parent: Subparsers, name: str, command: Command, help: str) -> argparse.ArgumentParser:
        description = help[0].upper() + help[1:] + "."
        p = parent.add_parser(name, parents=[common], help=help, description=description)
        p.set_defaults(admin=command)
        return p

    def queue_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("queue", metavar="QUEUE", type=queue_name, help="queue name")

    def state_arg(p: argparse.ArgumentParser, states: Sequence[str]) -> None:
        p.add_argument("state", metavar="STATE", choices=states, help=" | ".join(states))

    leaf(sub, "stats", cmd_stats, "show every queue at a glance: sizes, today's counts, latency")
    leaf(sub, "workers", cmd_workers, "list live workers and the tasks they are running")
    leaf(sub, "limits", cmd_limits, "list rate and concurrency limits and how busy they are")

    flows.add_commands(sub, leaf)

    cron = sub.add_parser("cron", help="list cron schedules")
    csub = cron.add_subparsers(dest="cron_command", metavar="COMMAND", required=True)
    leaf(csub, "ls", cmd_cron_ls, "list each cron schedule with its next and last run")

    queue = sub.add_parser("queue", help="list, inspect, pause, resume or remove queues")
    qsub = queue.add_subparsers(dest="queue_command", metavar="COMMAND", required=True)
    leaf(qsub, "ls", cmd_queue_ls, "list queue names")
    p = leaf(qsub, "show", cmd_queue_show, "show one queue's sizes, counters and daily history")
    queue_arg(p)
    p.add_argument("--days", type=positive_int, default=7, help="days of history to show (7)")
    queue_arg(leaf(qsub, "pause", cmd_queue_pause, "stop workers from claiming the queue's tasks"))
    queue_arg(leaf(qsub, "resume", cmd_queue_resume, "let workers claim the queue's tasks again"))
    p = leaf(qsub, "rm", cmd_queue_rm, "remove a queue and all its keys")
    queue_arg(p)
    p.add_argument("--force", action="store_true", help="remove it even if it holds tasks")

    task = sub.add_parser("task", help="list, inspect, run, archive, delete or cancel tasks")
    tsub = task.add_subparsers(dest="task_command", metavar="COMMAND", required=True)
    p = leaf(tsub, "ls", cmd_task_ls, "list one page of a queue's tasks in one state")
    queue_arg(p)
    state_arg(p, STATES)
    p.add_argument("--page", type=positive_int, default=1, help="page number, from 1 (1)")
    p.add_argument("--size", type=positive_int, default=50, help="tasks per page (50)")
    runnable, archivable = ACTION_STATES[Action.RUN], ACTION_STATES[Action.ARCHIVE]
    for name, command, help in (
        ("show", cmd_task_show, "show everything stored about one task"),
        ("run", cmd_task_run, f"run a {either(runnable)} task now"),
        ("archive", cmd_task_archive, f"archive a {either(archivable)} task"),
        ("rm", cmd_task_rm, "delete a task that is not active"),
        ("cancel", cmd_task_cancel, "cancel a task: a running one has its handler cancelled"),
    ):
        p = leaf(tsub, name, command, help)
        queue_arg(p)
        p.add_argument("id", metavar="ID", help="task id")
    for name, command, action in (
        ("run-all", cmd_task_run_all, Action.RUN),
        ("archive-all", cmd_task_archive_all, Action.ARCHIVE),
        ("rm-all", cmd_task_rm_all, Action.DELETE),
    ):
        p = leaf(tsub, name, command, f"{action.value} every task of a queue in one state")
        queue_arg(p)
        state_arg(p, [s.value for s in ACTION_STATES[action]])


def run(args: argparse.Namespace) -> int:
    """Run the admin command that ``args`` names; errors propagate to ``main``."""
    url = args.url or os.environ.get("AQUEUE_URL") or DEFAULT_URL
    command: Command = args.admin

    async def go() -> None:
        async with Inspector(url, timeout=args.timeout) as inspector:
            await command(inspector, args)

    try:
        anyio.run(go)
    except (rexc.RedisError, rexc.RedisClusterException) as exc:
        # Lost connections are BrokerUnavailable already; what redis-py still raises is
        # the server refusing a command (OOM, READONLY, MISCONF, ...) or a cluster
        # client's own failures. An operator's command ends in one line for those too.
        raise AqueueError(f"cannot use the server at {redacted(url)}: {exc}") from exc
    return 0


# -- commands ------------------------------------------------------------------------------


async def cmd_stats(i: Inspector, args: argparse.Namespace) -> None:
    infos: list[QueueInfo] = []
    for name in await i.queues():
        try:
            infos.append(await i.queue_info(name))
        except QueueNotFound:  # removed since it was listed
            continue
    live = await i.workers()
    served = {q for w in live for q in w.queues}
    unknown = await read_unknown_types(i.broker, [q.queue for q in infos])
    if args.json:
        return print_json([
            {**msgspec.structs.asdict(q), "served": q.queue in served,
             "unknown_types": unknown.get(q.queue, {})}
            for q in infos
        ])  # fmt: skip
    workers = len(live)
    evicting = _evicting(await read_eviction_policy(i.broker))
    if not infos:
        print(f"no queues yet; {plural(workers, 'live worker')}")
        for line in evicting:
            print(line)
        return
    headers = [
        "QUEUE", "PAUSED", "PENDING", "ACTIVE", "SCHEDULED", "RETRY", "ARCHIVED", "COMPLETED",
        "PROCESSED", "FAILED", "LATENCY", "MEMORY",
    ]  # fmt: skip
    rows = [_stats_row(q) for q in infos]
    print(table(headers, rows))
    print()
    print(
        f"PROCESSED and FAILED count attempts today ({today()} UTC). "
        f"LATENCY: how long the next pending task has waited. {plural(workers, 'live worker')}."
    )
    for line in _stats_warnings(infos, served, unknown) + evicting:
        print(line)


def _evicting(policy: str | None) -> list[str]:
    """A server that may evict keys when its memory is full would drop tasks."""
    if policy is None or policy == "noeviction":
        return []
    return [
        "",
        f"WARNING: the server's maxmemory-policy is {policy!r}: when its memory is full it "
        "evicts keys, tasks among them. Set maxmemory-policy noeviction (a full server "
        "then refuses new tasks, and enqueue says so).",
    ]


def _stats_warnings(
    infos: Sequence[QueueInfo], served: set[str], unknown: dict[str, dict[str, datetime]]
) -> list[str]:
    """What an operator must act on: pending tasks no live worker serves, and task types
    no worker has a handler for (their tasks are retried until one does)."""
    lines = []
    stuck = [q for q in infos if q.pending and q.queue not in served]
    if stuck:
        named = ", ".join(f"{q.queue} ({q.pending} pending)" for q in stuck)
        lines.append(f"WARNING: no live worker serves {named}.")
    for queue, types in unknown.items():
        named = ", ".join(f"{t} (last seen {ago(at)})" for t, at in types.items())
        lines.append(
            f"WARNING: queue {queue} has tasks of type(s) no worker has a handler for, "
            f"retried until one does: {named}."
        )
    return ["", *lines] if lines else []


def _stats_row(q: QueueInfo) -> list[object]:
    latency = duration_cell(q.latency) if q.pending else "-"
    return [
        q.queue, "yes" if q.paused else "no", q.pending, q.active, q.scheduled, q.retry,
        q.archived, q.completed, q.processed, q.failed, latency, size(q.memory_bytes),
    ]  # fmt: skip


async def cmd_workers(i: Inspector, args: argparse.Namespace) -> None:
    workers = await i.workers()
    if args.json:
        return print_json(workers)
    if not workers:
        print("no live workers")
        return
    print(table(
        ["WORKER", "HOST", "PID", "QUEUES", "CONCURRENCY", "ACTIVE", "STARTED"],
        [
            [w.id, w.host, w.pid, weights(w), w.concurrency, len(w.active), ago(w.started_at)]
            for w in workers
        ],
    ))  # fmt: skip
    active = [(w, t) for w in workers for t in w.active]
    if active:
        print()
        print(table(
            ["WORKER", "QUEUE", "TASK", "TYPE", "ATTEMPT", "ENQUEUED", "PAYLOAD"],
            [
                [w.id, t.queue, t.id, t.type, attempt(t), ago(t.enqueued_at), short(t.payload)]
                for w, t in active
            ],
        ))  # fmt: skip


async def cmd_limits(i: Inspector, args: argparse.Namespace) -> None:
    limits = await i.limits()
    if args.json:
        return print_json(limits)
    if not limits:
        print("no limits declared (a worker declares its mux's limits when it starts)")
        return
    print(table(
        ["QUEUE", "TASK TYPE", "RATE", "CONCURRENCY", "RUNNING", "KEYS", "HELD BACK"],
        [
            [x.queue, x.task_type or "(queue)", or_dash(x.rate_limit),
             or_dash(x.concurrency_limit), _running(x), x.keys, x.held_back]
            for x in limits
        ],
    ))  # fmt: skip
    print()
    print(
        "RUNNING: slots taken now, of those the concurrency limit allows (a task type's "
        "limit holds\nfor each of its KEYS: limit keys with pending or active tasks). "
        "HELD BACK: claims the limit\nheld back since it was declared, by every worker."
    )


def _running(x: LimitInfo) -> str:
    # Slots are counted for concurrency limits only: a rate limit has none to take.
    return "-" if x.concurrency_limit is None else f"{x.running}/{x.slots}"


async def cmd_cron_ls(i: Inspector, args: argparse.Namespace) -> None:
    entries = await i.cron_entries()
    if args.json:
        return print_json(entries)
    if not entries:
        print("no cron schedules (a worker registers its mux's schedules when it starts)")
        return
    print(table(
        ["SCHEDULE", "SPEC", "TZ", "TASK", "QUEUE", "NEXT RUN", "LAST RUN", "LAST TASK"],
        [
            [e.name, e.spec, e.tz, e.task, e.queue, when(e.next_run), when(e.last_run),
             e.history[0].task_id if e.history else "-"]
            for e in entries
        ],
    ))  # fmt: skip


async def cmd_queue_ls(i: Inspector, args: argparse.Namespace) -> None:
    names = await i.queues()
    if args.json:
        return print_json(names)
    for name in names:
        print(name)


async def cmd_queue_show(i: Inspector, args: argparse.Namespace) -> None:
    q: QueueInfo = await i.queue_info(args.queue)
    days: list[DailyStats] = await i.history(args.queue, args.days)
    if args.json:
        return print_json({**msgspec.structs.asdict(q), "history": days})
    print(fields([
        ("queue", q.queue),
        ("paused", "yes: workers claim nothing from it" if q.paused else "no"),
        ("pending", f"{q.pending} (the next has waited {duration_cell(q.latency)})"
                    if q.pending else "0"),
        ("active", q.active),
        ("scheduled", q.scheduled),
        ("retry", q.retry),
        ("archived", q.archived),
        ("completed", q.completed),
        ("processed", f"{q.processed} today, {q.processed_total} in total"),
        ("failed", f"{q.failed} today, {q.failed_total} in total"),
        ("memory", f"{size(q.memory_bytes)} (estimate)"),
    ]))  # fmt: skip
    print()
    print(table(
        ["DATE (UTC)", "PROCESSED", "FAILED", "FAILED %"],
        [[d.date, d.processed, d.failed, percent(d.failed, d.processed)] for d in days],
    ))  # fmt: skip


async def cmd_queue_pause(i: Inspector, args: argparse.Namespace) -> None:
    await i.pause(args.queue)
    report(args, {"queue": args.queue, "paused": True}, f"queue {args.queue!r} paused")


async def cmd_queue_resume(i: Inspector, args: argparse.Namespace) -> None:
    await i.resume(args.queue)
    report(args, {"queue": args.queue, "paused": False}, f"queue {args.queue!r} resumed")


async def cmd_queue_rm(i: Inspector, args: argparse.Namespace) -> None:
    try:
        await i.delete_queue(args.queue, force=args.force)
    except QueueNotEmpty as exc:
        raise QueueNotEmpty(
            f"queue {args.queue!r} still holds {exc.count} task(s): add --force to remove "
            "the queue with them",
            queue=args.queue,
            count=exc.count,
        ) from None
    report(args, {"queue": args.queue, "deleted": True}, f"queue {args.queue!r} removed")


async def cmd_task_ls(i: Inspector, args: argparse.Namespace) -> None:
    tasks = await i.list_tasks(args.queue, args.state, page=args.page, size=args.size)
    if args.json:
        return print_json(tasks)
    if not tasks:
        where = f" on page {args.page}" if args.page > 1 else ""
        print(f"no {args.state} tasks in queue {args.queue!r}{where}")
        return
    headers, row = _LISTINGS[args.state]
    print(table(["ID", "TYPE", *headers], [[t.id, t.type, *row(t)] for t in tasks]))
    if len(tasks) == args.size:
        print(f"\npage {args.page}; next: --page {args.page + 1}")


async def cmd_task_show(i: Inspector, args: argparse.Namespace) -> None:
    t = await i.get_task(args.queue, args.id)
    if args.json:
        return print_json(t)
    print(fields([
        ("id", t.id),
        ("queue", t.queue),
        ("type", t.type),
        ("state", t.state),
        ("payload", short(t.payload, 2000)),
        ("retried", f"{t.retried} of at most {t.max_retry}"),
        ("last error", t.last_error or "-"),
        ("last failed", when(t.last_failed_at)),
        ("enqueued", when(t.enqueued_at)),
        ("next run", when(t.next_process_at)),
        ("timeout", f"{t.timeout:g} s" if t.timeout else "-"),
        ("deadline", when(t.deadline)),
        ("retention", f"{t.retention:g} s" if t.retention else "-"),
        ("completed", when(t.completed_at)),
        ("result", short(t.result, 2000) if t.state == State.COMPLETED else "-"),
        ("progress", short(t.progress, 2000) if t.progress is not None else "-"),
        ("headers", ", ".join(f"{k}={v}" for k, v in t.headers.items()) or "-"),
    ]))  # fmt: skip


async def cmd_task_run(i: Inspector, args: argparse.Namespace) -> None:
    await i.run_task(args.queue, args.id)
    _moved(args, State.PENDING, "pending: it runs as soon as a worker is free")


async def cmd_task_archive(i: Inspector, args: argparse.Namespace) -> None:
    await i.archive_task(args.queue, args.id)
    _moved(args, State.ARCHIVED, "archived")


async def cmd_task_rm(i: Inspector, args: argparse.Namespace) -> None:
    await i.delete_task(args.queue, args.id)
    _moved(args, "deleted", "deleted")


async def cmd_task_cancel(i: Inspector, args: argparse.Namespace) -> None:
    before = await cancel_task(i.broker, args.queue, args.id)
    if before == State.ACTIVE:
        _moved(args, before, "cancel requested: its handler is being cancelled and the task "
               "will be archived as cancelled")  # fmt: skip
    elif before not in ACTION_STATES[Action.CANCEL]:  # it has ended already
        _moved(args, before, f"already {before}: nothing to cancel")
    else:
        _moved(args, State.ARCHIVED, f"archived as cancelled (it was {before})")


async def cmd_task_run_all(i: Inspector, args: argparse.Namespace) -> None:
    n = await i.run_all(args.queue, args.state)
    _bulk(args, n, f"moved {plural(n, args.state + ' task')} of queue {args.queue!r} to pending")


async def cmd_task_archive_all(i: Inspector, args: argparse.Namespace) -> None:
    n = await i.archive_all(args.queue, args.state)
    _bulk(args, n, f"archived {plural(n, args.state + ' task')} of queue {args.queue!r}")


async def cmd_task_rm_all(i: Inspector, args: argparse.Namespace) -> None:
    n = await i.delete_all(args.queue, args.state)
    _bulk(args, n, f"deleted {plural(n, args.state + ' task')} of queue {args.queue!r}")


# -- output --------------------------------------------------------------------------------

Row = Callable[[TaskInfo], list[object]]

# Per state, the columns of ``task ls`` after ID and TYPE.
_LISTINGS: dict[str, tuple[list[str], Row]] = {
    State.PENDING: (
        ["ATTEMPT", "ENQUEUED", "PAYLOAD"],
        lambda t: [attempt(t), ago(t.enqueued_at), short(t.payload)],
    ),
    State.ACTIVE: (
        ["ATTEMPT", "ENQUEUED", "PROGRESS", "PAYLOAD"],
        lambda t: [attempt(t), ago(t.enqueued_at), short(t.progress), short(t.payload)],
    ),
    State.SCHEDULED: (
        ["RUNS", "PAYLOAD"],
        lambda t: [ago(t.next_process_at), short(t.payload)],
    ),
    State.RETRY: (
        ["RETRIED", "NEXT TRY", "LAST ERROR"],
        lambda t: [f"{t.retried}/{t.max_retry}", ago(t.next_process_at), last_error(t)],
    ),
    State.ARCHIVED: (
        ["RETRIED", "FAILED", "LAST ERROR"],
        lambda t: [f"{t.retried}/{t.max_retry}", ago(t.last_failed_at), last_error(t)],
    ),
    State.COMPLETED: (
        ["COMPLETED", "RESULT"],
        lambda t: [ago(t.completed_at), short(t.result)],
    ),
}


def _moved(args: argparse.Namespace, state: str, text: str) -> None:
    data = {"queue": args.queue, "id": args.id, "state": state}
    report(args, data, f"task {args.id!r} in queue {args.queue!r}: {text}")


def _bulk(args: argparse.Namespace, n: int, text: str) -> None:
    report(args, {"queue": args.queue, "state": args.state, "moved": n}, text)
