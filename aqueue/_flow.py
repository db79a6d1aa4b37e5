"""Workflows as data (SPEC §7, docs/workflows.md): ``chain``, ``group`` and ``Flow``, and
their compilation into a plan: the steps in the order they were added, each with the
steps it waits for and the shape of the inputs it receives.

Pure: no I/O. Writing a plan and releasing its steps is ``_flows``' job.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Union

import msgspec

from ._job import Job
from ._task import TaskInfo
from .errors import InvalidOption

# What a step of a composition is.
Element = Union[Job[Any], "Chain", "Group", "Flow"]
# What an element hands its successors: one step's result (its index), or a list of
# them, nested as the composition is (a group's results in the group's order).
Output = int | list["Output"]


class Chain:
    """Steps one after another: each receives the previous one's result."""

    __slots__ = ("steps",)

    def __init__(self, steps: Sequence[Element]) -> None:
        self.steps = tuple(_element(s, "chain") for s in steps)
        if not self.steps:
            raise InvalidOption("a chain needs at least one step")

    def __repr__(self) -> str:
        return f"chain({', '.join(map(repr, self.steps))})"


class Group:
    """Steps side by side: a successor receives the list of their results."""

    __slots__ = ("steps",)

    def __init__(self, steps: Iterable[Element]) -> None:
        self.steps = tuple(_element(s, "group") for s in steps)
        if not self.steps:
            raise InvalidOption("a group needs at least one step")

    def __repr__(self) -> str:
        return f"group([{', '.join(map(repr, self.steps))}])"


def chain(*steps: Element) -> Chain:
    """Run ``steps`` one after another; each receives the previous one's result."""
    return Chain(steps)


def group(steps: Iterable[Element]) -> Group:
    """Run ``steps`` in parallel; a successor receives the list of their results."""
    return Group(steps)


class Step:
    """A handle on a step added to a ``Flow``: pass it as ``after=`` to later steps."""

    __slots__ = ("flow", "index")

    def __init__(self, flow: Flow, index: int) -> None:
        self.flow, self.index = flow, index

    def __repr__(self) -> str:
        return f"<step {self.index} of {self.flow!r}>"


class Flow:
    """Any DAG: ``add`` a step after others (``after=`` a handle or a list of them)."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        # Each step, the indexes of the steps it comes after (None: none), and whether
        # ``after`` was one handle (its result is passed as is, not as a list of one).
        self._items: list[tuple[Element, tuple[int, ...] | None, bool]] = []

    def add(self, step: Element, after: Step | Sequence[Step] | None = None) -> Step:
        """Add ``step``, to start once every step of ``after`` completed; it receives
        their results (one result, or a list in the order of ``after``)."""
        if step is self:
            raise InvalidOption("a flow cannot be added into itself")
        step = _element(step, "Flow.add")
        handles: tuple[int, ...] | None = None
        single = isinstance(after, Step)
        if after is not None:
            many: list[Any] = [after] if isinstance(after, Step) else list(after)
            if not many:
                raise InvalidOption("after= got an empty list")
            for h in many:
                if not isinstance(h, Step) or h.flow is not self:
                    raise InvalidOption(
                        f"after= takes handles this flow's add() returned, got {h!r}"
                    )
            handles = tuple(h.index for h in many)
        self._items.append((step, handles, single))
        return Step(self, len(self._items) - 1)

    def __repr__(self) -> str:
        return f"<Flow of {len(self._items)} step(s)>"


_ELEMENTS = (Job, Chain, Group, Flow)


def _element(step: object, where: str) -> Element:
    if isinstance(step, _ELEMENTS):
        return step
    raise InvalidOption(f"{where} takes Job, chain, group or Flow steps, got {step!r}")


class Node(NamedTuple):
    """One step of a plan: its job, the steps it waits for (indexes), and its inputs'
    shape (``None``: it waits for nothing)."""

    job: Job[Any]
    deps: tuple[int, ...]
    shape: Output | None


class Plan(NamedTuple):
    """A compiled workflow: its steps in the order added, and what it results in (the
    output of its last element: ``Client.result`` of the flow)."""

    nodes: list[Node]
    output: Output


def compile_flow(root: Element) -> Plan:
    """The plan of ``root``; ``InvalidOption`` for a flow nested into itself."""
    nodes: list[Node] = []
    active: list[Flow] = []

    def visit(element: Element, after: Output | None) -> Output:
        if isinstance(element, Job):
            nodes.append(Node(element, flat_output(after), after))
            return len(nodes) - 1
        if isinstance(element, Chain):
            out = after
            for step in element.steps:
                out = visit(step, out)
            assert out is not None
            return out
        if isinstance(element, Group):
            return [visit(step, after) for step in element.steps]
        if any(f is element for f in active):
            raise InvalidOption(f"{element!r} is nested into itself")
        if not element._items:
            raise InvalidOption("a flow needs at least one step")
        active.append(element)
        outs: list[Output] = []
        used: set[int] = set()
        for step, handles, single in element._items:
            given: Output | None = after
            if handles is not None:
                given = outs[handles[0]] if single else [outs[i] for i in handles]
                used.update(handles)
            outs.append(visit(step, given))
        active.pop()
        sinks = [o for i, o in enumerate(outs) if i not in used]
        return sinks[0] if len(sinks) == 1 else sinks

    output = visit(_element(root, "enqueue_flow"), None)
    return Plan(nodes, output)


def flat_output(out: Output | None) -> tuple[int, ...]:
    """The step indexes an output names, each once, in order."""
    seen: dict[int, None] = {}

    def walk(o: Output | None) -> None:
        if o is None:
            return
        if isinstance(o, int):
            seen[o] = None
        else:
            for x in o:
                walk(x)

    walk(out)
    return tuple(seen)


def assemble(shape: Output, results: dict[int, Any]) -> Any:
    """The value of ``shape`` given each step's result: what a step receives."""
    if isinstance(shape, int):
        return results[shape]
    return [assemble(s, results) for s in shape]


class FlowInfo(msgspec.Struct, kw_only=True):
    """A workflow as stored now (``Client.enqueue_flow``, ``Client.flow``).

    ``state``: ``pending`` until a step starts, ``running`` until every step is final,
    then ``completed``, ``failed`` (a step ended archived or revoked) or ``cancelled``.
    ``steps`` in the order added (a nested chain or group contributes its steps in
    place); ``done`` counts the steps in a final state, of ``total``.
    """

    id: str
    state: str
    steps: list[TaskInfo]
    done: int
    total: int
    created_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
