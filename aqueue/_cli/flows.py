"""The ``aqueue flow`` commands: ``ls``, ``show`` and ``cancel`` workflows
(docs/workflows.md).

They follow the admin commands' conventions (``admin``, which registers them with its
own ``--url``/``--json``/``--timeout`` options): a table or ``key: value`` lines, JSON
with ``--json``, exit 1 with one ``aqueue: error:`` line for an unknown flow or a server
that is down, exit 2 for bad arguments (a flow id that no flow can have included).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from .._flow import FlowInfo
from .._flowreads import list_flows, read_flow
from .._flows import valid_flow_id
from .._inspector import Inspector
from .._task import TaskInfo
from .args import positive_int
from .output import ago, fields, last_error, print_json, report, short, table, when

Command = Callable[[Inspector, argparse.Namespace], Awaitable[None]]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
# ``admin.add_commands``' maker of a command's parser: (parent, name, command, help).
Leaf = Callable[[Subparsers, str, Command, str], argparse.ArgumentParser]

# As ``Inspector.flows`` takes them: waiting, moving, then the three ends.
FLOW_STATES = ("pending", "running", "completed", "failed", "cancelled")
_ENDED = FLOW_STATES[2:]


def flow_id(text: str) -> str:
    """A flow id as ``Client.enqueue_flow`` accepts one: anything else names no flow."""
    if not valid_flow_id(text):
        raise argparse.ArgumentTypeError(
            f"a flow id is 1-100 characters of [A-Za-z0-9_.-], got {text!r}"
        )
    return text


def add_commands(sub: Subparsers, leaf: Leaf) -> None:
    """Add ``aqueue flow ls|show|cancel`` to the ``aqueue`` parser."""
    flow = sub.add_parser("flow", help="list, inspect or cancel workflows")
    fsub = flow.add_subparsers(dest="flow_command", metavar="COMMAND", required=True)
    p = leaf(fsub, "ls", cmd_flow_ls, "list one page of workflows, newest first")
    p.add_argument(
        "--state", choices=FLOW_STATES, default=None, metavar="STATE",
        help=f"only flows in this state: {' | '.join(FLOW_STATES)}",
    )  # fmt: skip
    p.add_argument("--page", type=positive_int, default=1, help="page number, from 1 (1)")
    p.add_argument("--size", type=positive_int, default=50, help="flows per page (50)")
    for name, command, help in (
        ("show", cmd_flow_show, "show one workflow and each of its steps"),
        ("cancel", cmd_flow_cancel, "cancel a workflow: running steps are cancelled, the "
         "rest archived"),
    ):  # fmt: skip
        p = leaf(fsub, name, command, help)
        p.add_argument("flow_id", metavar="FLOW_ID", type=flow_id, help="flow id")


# -- commands ------------------------------------------------------------------------------


async def cmd_flow_ls(i: Inspector, args: argparse.Namespace) -> None:
    # Summaries (steps empty, also in --json): `flow show` reads a flow's steps.
    flows = await list_flows(i.broker, args.state, args.page, args.size, steps=False)
    if args.json:
        return print_json(flows)
    if not flows:
        what = f"{args.state} flows" if args.state else "flows"
        where = f" on page {args.page}" if args.page > 1 else ""
        print(f"no {what}{where}")
        return
    print(table(
        ["FLOW", "STATE", "STEPS DONE", "CREATED", "ENDED", "ERROR"],
        [
            [f.id, f.state, f"{f.done}/{f.total}", ago(f.created_at), ago(f.completed_at),
             _error(f.error)]
            for f in flows
        ],
    ))  # fmt: skip
    if len(flows) == args.size:
        print(f"\npage {args.page}; next: --page {args.page + 1}")


async def cmd_flow_show(i: Inspector, args: argparse.Namespace) -> None:
    f = await read_flow(i.broker, args.flow_id)
    if args.json:
        return print_json(f)
    print(fields([
        ("flow", f.id),
        ("state", f.state),
        ("steps done", f"{f.done} of {f.total}"),
        ("created", when(f.created_at)),
        ("ended", when(f.completed_at)),
        ("error", f.error or "-"),
    ]))  # fmt: skip
    print()
    print(table(
        ["#", "STEP", "TYPE", "QUEUE", "STATE", "ERROR"],
        [[n, t.id, t.type, t.queue, t.state, _step_error(t)] for n, t in enumerate(f.steps)],
    ))  # fmt: skip


async def cmd_flow_cancel(i: Inspector, args: argparse.Namespace) -> None:
    before: FlowInfo = await read_flow(i.broker, args.flow_id)  # unknown: exit 1 here
    if before.state in _ENDED:
        return _said(args, before.state, f"already {before.state}: nothing to cancel")
    await i.cancel_flow(args.flow_id)
    _said(args, "cancelled", "cancelled: its running steps are being cancelled and the "
          "steps not started are archived")  # fmt: skip


# -- output --------------------------------------------------------------------------------


def _error(error: str | None) -> str:
    return short((error or "").split("\n")[0] or None, 90)


def _step_error(t: TaskInfo) -> str:
    # A step that completed after a retry keeps its last error: history, not a cause.
    return "-" if t.state == "completed" else last_error(t)


def _said(args: argparse.Namespace, state: str, text: str) -> None:
    report(args, {"id": args.flow_id, "state": state}, f"flow {args.flow_id!r}: {text}")
