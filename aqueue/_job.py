"""``Job``: one task to write, as data (a handler or a type name, a payload, options).
The unit of ``Client.enqueue_many`` and of a workflow's steps (``_flow``)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar, overload

from ._mux import Handler

P = TypeVar("P")

# What a Job's payload is when none was given: a workflow step without a payload of its
# own receives its dependencies' results as its payload (docs/workflows.md).
NO_PAYLOAD: Any = None


class Job(Generic[P]):
    """One task for ``Client.enqueue_many`` or a workflow: a handler or type name, a
    payload, options."""

    __slots__ = ("has_payload", "options", "payload", "task")

    @overload
    def __init__(self, task: Handler[P, Any], payload: P = ..., **options: Any) -> None: ...
    @overload
    def __init__(self, task: str, payload: Any = ..., **options: Any) -> None: ...
    def __init__(self, task: Handler[Any, Any] | str, payload: Any = ..., **options: Any) -> None:
        self.task = task
        # A workflow step tells "no payload given" (it gets its inputs) from None.
        self.has_payload = payload is not ...
        self.payload = payload if self.has_payload else None
        self.options = options

    @property
    def name(self) -> str:
        return self.task if isinstance(self.task, str) else self.task.name

    def __repr__(self) -> str:
        return f"Job({self.name!r}, {self.payload!r}, **{self.options!r})"
