"""The dashboard's workflow pages (docs/workflows.md): the flows, newest first, filtered by
state, with their progress; one flow's steps in stages by dependency depth, each linked
to its task while its queue holds it; and, when actions are enabled, cancelling a flow.

``FlowPages`` is handed the ``Dashboard`` (through the few calls ``Host`` names) and
gives the app its routes; it reads through the ``Inspector`` and ``_flowreads``, plus
``read_deps`` below for the dependency edges, which ``FlowInfo`` does not carry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .._flowreads import list_flows, read_flow
from .._flows import valid_flow_id
from .._inspector import Inspector
from .._reads import read_tasks, text
from .._redis.keys import FlowKeys
from .._task import TaskInfo

# As ``Inspector.flows`` takes them: waiting, moving, then the three ends.
FLOW_STATES = ("pending", "running", "completed", "failed", "cancelled")
ENDED = FLOW_STATES[2:]
PAGE_SIZE = 20
# The most steps a flow's page shows (a 10,000-step fan-out is read, and re-read at each
# poll, a thousand steps at a time at most).
STEPS_SHOWN = 1000


class Inspectors(Protocol):
    def get(self) -> Inspector: ...


class Host(Protocol):
    """What the pages use of the ``Dashboard``."""

    @property
    def inspectors(self) -> Inspectors: ...

    def render(
        self, request: Request, name: str, status: int = 200, **context: Any
    ) -> Response: ...

    def problem(self, request: Request, status: int, message: str) -> Response: ...

    async def act(
        self, request: Request, action: Callable[[Inspector], Awaitable[str]], back: str
    ) -> Response: ...


@dataclass(frozen=True)
class StepRow:
    """One step on a flow's page: its index, its task, the steps it waits for, and
    whether its queue holds it now (a step waiting for its dependencies is not written
    there yet; a finished one may be gone once its retention passed)."""

    index: int
    task: TaskInfo
    after: tuple[int, ...]
    linked: bool


class FlowPages:
    def __init__(self, dash: Host) -> None:
        self.dash = dash

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/flows", self.flows),
            Route("/flows/{flow_id}", self.flow),
            Route("/flows/{flow_id}/cancel", self.cancel, methods=["POST"]),
        ]

    async def flows(self, request: Request) -> Response:
        state = request.query_params.get("state", "").strip() or None
        if state is not None and state not in FLOW_STATES:
            return self.dash.problem(
                request, 400, f"unknown flow state {state!r}: use one of {', '.join(FLOW_STATES)}"
            )
        page = _page(request.query_params.get("page"))
        # Summaries: the list shows no steps, and a flow's steps may be thousands.
        broker = self.dash.inspectors.get().broker
        flows = await list_flows(broker, state, page, PAGE_SIZE, steps=False)
        return self.dash.render(
            request, "flows.html", flows=flows, state=state, page=page,
            more=len(flows) == PAGE_SIZE, FLOW_STATES=FLOW_STATES, nav="flows",
        )  # fmt: skip

    async def flow(self, request: Request) -> Response:
        flow_id = request.path_params["flow_id"]
        if not valid_flow_id(flow_id):
            return self.dash.problem(request, 404, f"no flow {flow_id!r}")
        inspector = self.dash.inspectors.get()
        info = await read_flow(inspector.broker, flow_id)  # TaskNotFound: a 404 page
        shown = info.steps[:STEPS_SHOWN]
        deps = await read_deps(inspector, flow_id, len(shown))
        found = await read_tasks(inspector.broker, [(t.queue, t.id) for t in shown])
        rows = [
            StepRow(i, t, after, held is not None)
            for i, (t, after, held) in enumerate(zip(shown, deps, found, strict=True))
        ]
        return self.dash.render(
            request, "flow.html", flow=info, stages=[[rows[i] for i in s] for s in stages(deps)],
            shown=len(shown), cancellable=info.state not in ENDED, nav="flows",
        )  # fmt: skip

    async def cancel(self, request: Request) -> Response:
        flow_id = request.path_params["flow_id"]

        async def act(inspector: Inspector) -> str:
            before = await read_flow(inspector.broker, flow_id)  # unknown: said as an error
            if before.state in ENDED:
                return f"flow {flow_id} already {before.state}: nothing to cancel"
            await inspector.cancel_flow(flow_id)
            return (
                f"flow {flow_id} cancelled: its running steps are being cancelled and the "
                "steps not started are archived"
            )

        return await self.dash.act(request, act, f"/flows/{quote(flow_id, safe='')}")


async def read_deps(inspector: Inspector, flow_id: str, count: int) -> list[tuple[int, ...]]:
    """Internal: the steps each of the flow's first ``count`` steps waits for, read from
    the flow's ``meta`` hash (fields ``d:<index>``, comma-separated indexes, absent for a
    step that waits for nothing). A step only waits for steps added before it, so the
    first ``count`` steps' edges stay among themselves."""
    if not count:
        return []
    b = inspector.broker
    meta = FlowKeys(b.prefix, flow_id).meta
    names = [f"d:{i}" for i in range(count)]
    raw = await b.run(lambda: b.redis.hmget(meta, names))
    return [tuple(int(x) for x in text(v).split(",") if x) if v else () for v in raw]


def stages(deps: Sequence[tuple[int, ...]]) -> list[list[int]]:
    """The steps by dependency depth: first those that wait for nothing, then each step
    one stage after the deepest step it waits for; in the order added within a stage."""
    depth: list[int] = []
    for i, after in enumerate(deps):
        depth.append(1 + max((depth[j] for j in after if j < i), default=-1))
    out: list[list[int]] = [[] for _ in range(max(depth, default=-1) + 1)]
    for i, d in enumerate(depth):
        out[d].append(i)
    return out


def _page(raw: str | None) -> int:
    try:
        return max(1, int(raw or 1))
    except ValueError:
        return 1
