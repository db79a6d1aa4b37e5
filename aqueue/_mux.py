"""Routing task types to handlers: ``Mux``, ``Handler`` and the handler ``Context``."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, overload

from ._cron import CronSpec, check_spec
from ._limits import LimitSpec, Rate, limit_spec
from ._options import OPTION_NAMES, check_options
from ._task import DEFAULT_QUEUE, check_queue_name
from .errors import InvalidOption

P = TypeVar("P")
R = TypeVar("R")

CallNext = Callable[[], Awaitable[Any]]
Middleware = Callable[["Context", CallNext], Awaitable[Any]]
ProgressSink = Callable[[Any], Awaitable[None]]

_NO_PAYLOAD: Any = object()


class Context:
    """What a handler knows about the attempt it is running.

    Besides the task's identity and attempt: ``priority`` (0-9) and ``limit_key``
    (None when the task has none) as enqueued; in a workflow step, ``flow_id`` (None
    outside flows) and ``inputs``, the results of the step's dependencies when it has
    a payload of its own (None outside flows).
    """

    __slots__ = (
        "_deadline",
        "_deadline_ms",
        "_enqueued",
        "_enqueued_ms",
        "_progress",
        "cancelled_by",
        "flow_id",
        "headers",
        "inputs",
        "limit_key",
        "max_retry",
        "priority",
        "queue",
        "retry_count",
        "task_id",
        "task_type",
    )

    def __init__(
        self,
        *,
        task_id: str,
        task_type: str,
        queue: str,
        retry_count: int,
        max_retry: int,
        deadline: datetime | None = None,
        enqueued_at: datetime | None = None,
        headers: Mapping[str, str],
        progress: ProgressSink | None = None,
        deadline_ms: int = 0,
        enqueued_at_ms: int = 0,
        priority: int = 0,
        limit_key: str | None = None,
        flow_id: str | None = None,
        inputs: Any = None,
    ) -> None:
        self.task_id = task_id
        self.task_type = task_type
        self.queue = queue
        self.retry_count = retry_count
        self.max_retry = max_retry
        # Times may come as epoch ms and become datetimes only if a handler asks:
        # building two datetimes per task is a measurable cost on the hot path.
        self._deadline = deadline
        self._deadline_ms = deadline_ms
        self._enqueued = enqueued_at
        self._enqueued_ms = enqueued_at_ms
        self.headers = dict(headers)
        self._progress = progress
        self.priority = priority
        self.limit_key = limit_key
        self.flow_id = flow_id
        self.inputs = inputs
        # Why the worker cancelled this attempt: "shutdown", "lost" or "cancel"; a
        # timeout leaves it None (the time ran out at ``deadline``).
        self.cancelled_by: str | None = None

    @property
    def deadline(self) -> datetime | None:
        """When this attempt is cancelled (the earlier of timeout and deadline)."""
        if self._deadline is None and self._deadline_ms:
            self._deadline = datetime.fromtimestamp(self._deadline_ms / 1000, tz=UTC)
        return self._deadline

    @property
    def enqueued_at(self) -> datetime | None:
        """When the task was enqueued."""
        if self._enqueued is None and self._enqueued_ms:
            self._enqueued = datetime.fromtimestamp(self._enqueued_ms / 1000, tz=UTC)
        return self._enqueued

    async def progress(self, value: Any) -> None:
        """Publish how far the task has come (any msgspec-encodable value)."""
        if self._progress is not None:
            await self._progress(value)

    def __repr__(self) -> str:
        return (
            f"Context(task_id={self.task_id!r}, task_type={self.task_type!r}, "
            f"queue={self.queue!r}, retry_count={self.retry_count})"
        )


class Handler(Generic[P, R]):
    """A registered task type: pass it to ``Client.enqueue`` or ``Job``.

    Calling it calls the wrapped function directly, which keeps handlers unit-testable.
    ``limits`` are its task type's rate and concurrency limits (None: unlimited).
    """

    __slots__ = ("fn", "is_async", "limits", "name", "options", "payload_type")

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        options: Mapping[str, Any],
        limits: LimitSpec | None = None,
    ) -> None:
        self.name = name
        self.fn = fn
        self.options = dict(options)
        self.limits = limits
        self.is_async = inspect.iscoroutinefunction(fn)
        self.payload_type = _payload_type(name, fn)

    @property
    def takes_payload(self) -> bool:
        return self.payload_type is not _NO_PAYLOAD

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Handler {self.name!r} -> {getattr(self.fn, '__qualname__', self.fn)!r}>"


def _payload_type(name: str, fn: Callable[..., Any]) -> Any:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as exc:
        raise InvalidOption(f"handler for {name!r} is not a function: {fn!r}") from exc
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) not in (1, 2) or len(positional) != len(
        [
            p
            for p in params
            if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]
    ):
        raise InvalidOption(
            f"handler for {name!r} must take (ctx) or (ctx, payload), "
            f"got {fn.__qualname__}{inspect.signature(fn)}"
        )
    if len(positional) == 1:
        return _NO_PAYLOAD
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:  # an unresolvable forward reference
        raise InvalidOption(
            f"cannot resolve the payload annotation of handler {name!r}: {exc}"
        ) from exc
    return hints.get(positional[1].name, Any)


class _Entry:
    __slots__ = ("chains", "handler")

    def __init__(self, handler: Handler[Any, Any], chains: tuple[list[Middleware], ...]) -> None:
        self.handler = handler
        self.chains = chains

    def middleware(self) -> list[Middleware]:
        """The chains read when called (middleware added later counts); with one
        chain, that list itself: callers only read it, and no copy per task."""
        if len(self.chains) == 1:
            return self.chains[0]
        return [mw for chain in self.chains for mw in chain]


class _Decorator:
    def __init__(self, mux: Mux, name: str, options: dict[str, Any]) -> None:
        self._mux, self._name, self._options = mux, name, options

    @overload
    def __call__(self, fn: Callable[[Context], Awaitable[R]]) -> Handler[None, R]: ...
    @overload
    def __call__(self, fn: Callable[[Context, P], Awaitable[R]]) -> Handler[P, R]: ...
    @overload
    def __call__(self, fn: Callable[[Context], R]) -> Handler[None, R]: ...
    @overload
    def __call__(self, fn: Callable[[Context, P], R]) -> Handler[P, R]: ...
    def __call__(self, fn: Callable[..., Any]) -> Handler[Any, Any]:
        return self._mux.handle(self._name, fn, **self._options)


class _CronDecorator:
    def __init__(
        self,
        mux: Mux,
        spec: str,
        name: str | None,
        tz: str,
        catch_up: str,
        catch_up_max: int,
        options: dict[str, Any],
        limits: dict[str, Any],
    ) -> None:
        self._mux, self._spec, self._name, self._tz = mux, spec, name, tz
        self._catch_up, self._catch_up_max, self._options = catch_up, catch_up_max, options
        self._limits = limits  # rate_limit/concurrency_limit: the handler's, not the ticks'

    @overload
    def __call__(self, fn: Callable[[Context], Awaitable[R]]) -> Handler[None, R]: ...
    @overload
    def __call__(self, fn: Callable[[Context], R]) -> Handler[None, R]: ...
    def __call__(self, fn: Callable[..., Any]) -> Handler[Any, Any]:
        name = self._name or f"{fn.__module__}.{fn.__qualname__}"
        # Validate the schedule before registering anything, so a bad one leaves no half.
        cron = CronSpec(
            name,
            self._spec,
            name,
            None,
            self._options,
            tz=self._tz,
            catch_up=self._catch_up,
            catch_up_max=self._catch_up_max,
        )
        if name in self._mux._cron:
            raise InvalidOption(f"cron entry {name!r} is already registered")
        handler = self._mux.handle(name, fn, **self._limits, **self._options)
        cron.task = handler
        self._mux._add_cron(cron)
        return handler


class Mux:
    """Maps task type names to handlers, with middleware.

    A name ending in ``:`` is a prefix pattern (``"email:"`` serves ``"email:send"``);
    an exact name beats any pattern and the longest pattern wins.

    A Mux also declares flow-control limits (of task types and of whole queues); a
    worker publishes them all when it starts (``limits``).
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._middleware: list[Middleware] = []
        self._prefixes: list[str] = []
        self._cron: dict[str, CronSpec] = {}
        self._queue_limits: dict[str, LimitSpec] = {}

    def task(
        self,
        name: str,
        *,
        rate_limit: Rate | str | None = None,
        concurrency_limit: int | None = None,
        **options: Any,
    ) -> _Decorator:
        """Register the decorated function as the handler of ``name``.

        ``options`` are the defaults of tasks enqueued through the returned handler
        (any ``enqueue`` option but ``task_id``; ``limit_key`` may also be a callable
        ``(payload) -> str``). ``rate_limit`` (a ``Rate`` or ``"N/s"``, ``"N/m"``,
        ``"N/h"``) and ``concurrency_limit`` (an int >= 1) bound the task type across
        every worker, per limit key.
        """
        limits = {"rate_limit": rate_limit, "concurrency_limit": concurrency_limit}
        return _Decorator(self, name, {**options, **limits})

    def handle(
        self,
        name: str,
        fn: Callable[..., Any],
        *,
        rate_limit: Rate | str | None = None,
        concurrency_limit: int | None = None,
        **options: Any,
    ) -> Handler[Any, Any]:
        """Register ``fn`` as the handler of ``name`` (see ``task``)."""
        if not isinstance(name, str) or not name or not name.isprintable():
            raise InvalidOption(
                f"task name must be a non-empty string without control characters, got {name!r}"
            )
        unknown = set(options) - OPTION_NAMES
        if unknown or "task_id" in options:
            bad = sorted(unknown | ({"task_id"} & set(options)))
            raise InvalidOption(f"unknown handler option(s) {bad} for task {name!r}")
        check_options(options, f"task {name!r}", handler=True)
        limits = limit_spec(rate_limit, concurrency_limit, f"task {name!r}")
        if limits is not None and name.endswith(":"):
            # A limit is kept per task type; a pattern names no one type to keep it under.
            raise InvalidOption(f"limits need an exact task type, not the pattern {name!r}")
        handler: Handler[Any, Any] = Handler(name, fn, options, limits)
        self._add(name, _Entry(handler, (self._middleware,)))
        return handler

    def limit_queue(
        self,
        queue: str,
        *,
        rate_limit: Rate | str | None = None,
        concurrency_limit: int | None = None,
    ) -> None:
        """Limit a whole queue across every worker: at most ``rate_limit`` starts and
        ``concurrency_limit`` running tasks, whatever their type. Calling it again for
        the same queue replaces its limits."""
        check_queue_name(queue)
        limits = limit_spec(rate_limit, concurrency_limit, f"queue {queue!r}")
        if limits is None:
            raise InvalidOption(f"limit_queue({queue!r}) needs a rate_limit or a concurrency_limit")
        self._queue_limits[queue] = limits

    def limits(self) -> dict[str, dict[str, LimitSpec]]:
        """Every limit this mux declares, by queue: field ``"q"`` is the queue's own,
        ``"t:<task type>"`` a task type's, under its handler's queue.

        Every queue named by a handler or ``limit_queue`` is there, with ``{}`` when it
        has no limits: a worker replaces each listed queue's declaration with this, so
        a limit removed from the code is lifted.
        """
        found: dict[str, dict[str, LimitSpec]] = {
            queue: {"q": spec} for queue, spec in self._queue_limits.items()
        }
        for entry in self._entries.values():
            handler = entry.handler
            fields = found.setdefault(handler.options.get("queue") or DEFAULT_QUEUE, {})
            if handler.limits is not None:
                fields["t:" + handler.name] = handler.limits
        return found

    def cron(
        self,
        spec: str,
        *,
        name: str | None = None,
        tz: str = "UTC",
        catch_up: str = "latest",
        catch_up_max: int = 100,
        rate_limit: Rate | str | None = None,
        concurrency_limit: int | None = None,
        **options: Any,
    ) -> _CronDecorator:
        """Run the decorated function on a schedule; it is registered as a task too.

        ``spec`` is croniter syntax (5 fields, or 6 with seconds last) in time zone
        ``tz``. The task name, which is also the schedule's name, defaults to
        ``module.qualname``. ``catch_up`` says what a scheduler starting after every
        worker was down does with ticks it missed: ``"latest"`` enqueues the latest one
        once, ``"skip"`` none, ``"all"`` each of them (at most ``catch_up_max``).
        ``options`` are the enqueue options of every tick's task; ``rate_limit`` and
        ``concurrency_limit`` limit the task type as in ``task``.
        """
        check_spec(spec, tz)
        limits = {"rate_limit": rate_limit, "concurrency_limit": concurrency_limit}
        return _CronDecorator(self, spec, name, tz, catch_up, catch_up_max, options, limits)

    def cron_task(
        self,
        spec: str,
        name: str | Handler[Any, Any],
        payload: Any = None,
        *,
        entry: str | None = None,
        tz: str = "UTC",
        catch_up: str = "latest",
        catch_up_max: int = 100,
        **options: Any,
    ) -> CronSpec:
        """Enqueue an existing task (a handler or a type name) with ``payload`` on a
        schedule. The schedule's name (``entry``) defaults to ``"<task>@<spec>"``; give
        one when the same task is scheduled twice with the same spec."""
        task_type = name if isinstance(name, str) else name.name
        cron = CronSpec(
            entry or f"{task_type}@{spec}",
            spec,
            name,
            payload,
            options,
            tz=tz,
            catch_up=catch_up,
            catch_up_max=catch_up_max,
        )
        self._add_cron(cron)
        return cron

    def _add_cron(self, cron: CronSpec) -> None:
        if cron.name in self._cron:
            raise InvalidOption(f"cron entry {cron.name!r} is already registered")
        self._cron[cron.name] = cron

    @property
    def cron_entries(self) -> list[CronSpec]:
        return list(self._cron.values())

    def use(self, middleware: Middleware) -> None:
        """Add middleware ``async def mw(ctx, call_next)``; the first added runs outermost."""
        if not callable(middleware):
            raise InvalidOption(f"middleware must be callable, got {middleware!r}")
        self._middleware.append(middleware)

    def include(self, other: Mux) -> None:
        """Serve every handler of ``other`` too, wrapped in this mux's middleware
        and then ``other``'s own, and declare its queue limits. Like a task name
        registered in both, a queue limited differently in both is refused: neither
        limit is obviously the one meant."""
        if other is self:
            raise InvalidOption("a Mux cannot include itself")
        clash = sorted(set(self._entries) & set(other._entries))
        if clash:
            raise InvalidOption(f"task name(s) {clash} are registered in both muxes")
        clash = sorted(set(self._cron) & set(other._cron))
        if clash:
            raise InvalidOption(f"cron entry name(s) {clash} are registered in both muxes")
        clash = sorted(
            q for q, spec in other._queue_limits.items() if self._queue_limits.get(q, spec) != spec
        )
        if clash:
            raise InvalidOption(f"queue(s) {clash} are limited differently in both muxes")
        for name, entry in other._entries.items():
            self._add(name, _Entry(entry.handler, (self._middleware, *entry.chains)))
        self._cron.update(other._cron)
        self._queue_limits.update(other._queue_limits)

    def _add(self, name: str, entry: _Entry) -> None:
        if name in self._entries:
            raise InvalidOption(f"task name {name!r} is already registered")
        self._entries[name] = entry
        if name.endswith(":"):
            self._prefixes.append(name)
            self._prefixes.sort(key=len, reverse=True)

    def resolve(self, task_type: str) -> _Entry | None:
        """The entry serving ``task_type``: exact name first, then the longest pattern."""
        entry = self._entries.get(task_type)
        if entry is not None and not task_type.endswith(":"):
            return entry
        for prefix in self._prefixes:
            if task_type.startswith(prefix):
                return self._entries[prefix]
        return None

    @property
    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, task_type: object) -> bool:
        return isinstance(task_type, str) and self.resolve(task_type) is not None
