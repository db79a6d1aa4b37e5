"""Running one claimed task: payload decoding, middleware, the timeout scope, and the
decision of what the attempt's outcome is. No I/O happens here: ``Outcomes`` writes the
outcome."""

from __future__ import annotations

import enum
import functools
import inspect
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import anyio
import msgspec

from .._codec import Body, decode_payload, decode_value, encode_value
from .._mux import Context, Mux, ProgressSink, _Entry
from .._task import TaskInfo, from_ms
from ..errors import InvalidPayload, Retry, Revoke, SkipRetry

log = logging.getLogger("aqueue.worker")
_NO_HEADERS: dict[str, str] = {}

RetryDelay = Callable[[int, BaseException, TaskInfo], float]
IsFailure = Callable[[BaseException], bool]
OnError = Callable[[Context, BaseException], Any]
# Told (queue, task type) of each task whose type no handler serves.
OnUnknown = Callable[[str, str], Awaitable[None]]


_scope_class: type[anyio.CancelScope] | None = None


def deadline_scope(seconds: float) -> anyio.CancelScope:
    """``anyio.CancelScope(deadline=now + seconds)`` for the asyncio backend, without
    anyio's backend lookup on every call: the worker opens one per task (its timeout),
    and the lookup was a visible share of a no-op task's cost. The loop's clock is
    ``time.monotonic()`` (uvloop's too, at millisecond resolution); redis.asyncio needs
    asyncio anyway."""
    global _scope_class
    cls = _scope_class
    if cls is None:
        cls = _scope_class = type(anyio.CancelScope())
    return cls(deadline=time.monotonic() + seconds)


def today() -> str:
    """The UTC day whose stats (``p:<day>``, ``f:<day>``) an attempt ending now counts in."""
    return time.strftime("%Y-%m-%d", time.gmtime())


# Seconds at most between two tries of a task whose type no handler serves, whatever the
# retry policy says: it is most likely waiting for a newer worker (a rolling deploy), which
# should get it within a minute, not after the default back-off's days. docs/options.md.
UNKNOWN_TYPE_MAX_DELAY = 60.0


def default_retry_delay(retry_count: int, error: BaseException, task: TaskInfo) -> float:
    """``n**4 + 15 + random(0..30) * (n + 1)`` seconds, as in Sidekiq and Asynq."""
    n = retry_count
    return float(n**4 + 15 + random.randint(0, 30) * (n + 1))


class Reason(enum.StrEnum):
    """Why the worker cancelled a handler (``Context.cancelled_by``)."""

    SHUTDOWN = "shutdown"  # the worker is stopping: the task goes back to its queue
    LOST = "lost"  # the lease lapsed: another worker may own the task now
    CANCEL = "cancel"  # Client.cancel / Inspector.cancel asked for it


class Kind(enum.StrEnum):
    """What an attempt's outcome does. The four failure kinds are ``fail.lua``'s
    actions, passed to it as they are."""

    ACK = "ack"  # success
    RETRY = "retry"  # a failure: spends a retry
    AGAIN = "again"  # retry without spending one: not a failure per ``is_failure``
    ARCHIVE = "archive"  # no retry can help, or retries are spent
    REVOKE = "revoke"  # the handler raised Revoke: archived, no failure counted
    REQUEUE = "requeue"  # shutdown: back to the head of the queue, no attempt counted
    DROP = "drop"  # lease lost: another worker owns the task now, write nothing


class Claimed:
    """A task this worker holds under a lease, with the token that fences its writes."""

    __slots__ = (
        "body",
        "ctx",
        "digest",
        "id",
        "limit_key",
        "max_retry",
        "priority",
        "queue",
        "reason",
        "retried",
        "scope",
        "step",
        "token",
    )

    def __init__(
        self,
        queue: str,
        id: str,
        token: str,
        max_retry: int,
        digest: str,
        body: Body,
        retried: int,
        priority: int = 0,
        limit_key: str = "",
        step: str = "",
    ) -> None:
        self.queue = queue
        self.priority = priority
        self.limit_key = limit_key
        self.step = step  # "<flow id>:<index>" for a workflow's step
        self.id = id
        self.token = token
        self.max_retry = max_retry
        self.digest = digest
        self.body = body
        self.retried = retried
        self.scope: anyio.CancelScope | None = None
        self.ctx: Context | None = None
        # Why the worker cancelled the handler, if it did.
        self.reason: Reason | None = None

    def cancel(self, reason: Reason) -> None:
        if self.reason is None:
            self.reason = reason
            if self.ctx is not None:
                self.ctx.cancelled_by = reason
        if self.scope is not None:
            self.scope.cancel()

    def info(self, state: str = "active") -> TaskInfo:
        b = self.body
        return TaskInfo(
            id=self.id,
            queue=self.queue,
            type=b.type,
            payload=decode_value(b.payload),
            state=state,
            max_retry=self.max_retry,
            retried=self.retried,
            timeout=b.timeout or None,
            deadline=from_ms(b.deadline),
            enqueued_at=from_ms(b.enqueued_at),
            retention=b.retention,
            headers=b.headers or {},
        )


@dataclass(slots=True)
class Outcome:
    """What to write for a finished attempt (see ``Kind``). Never changed once made:
    the outcomes without details are shared."""

    kind: Kind
    result: bytes = b""
    error: str = ""
    delay: float = 0.0


# The common outcomes, made once rather than per attempt.
_ACKED = Outcome(Kind.ACK)
_REVOKED = Outcome(Kind.REVOKE)
_REQUEUED = Outcome(Kind.REQUEUE)
_DROPPED = Outcome(Kind.DROP)
_CANCELLED = Outcome(Kind.ARCHIVE, error="cancelled")


class Runner:
    """Runs handlers for one worker; holds the worker's policies."""

    def __init__(
        self,
        mux: Mux,
        *,
        retry_delay: RetryDelay | None,
        is_failure: IsFailure | None,
        on_error: OnError | None,
        limiter: anyio.CapacityLimiter,
        on_unknown: OnUnknown | None = None,
    ) -> None:
        self.mux = mux
        self.retry_delay = retry_delay or default_retry_delay
        self.is_failure = is_failure
        self.on_error = on_error
        self.limiter = limiter
        self.on_unknown = on_unknown

    async def run(self, task: Claimed, progress: ProgressSink | None) -> Outcome:
        if task.reason is not None:  # cancelled (e.g. shutdown) before it could start
            return self._interrupted(task)
        body = task.body
        entry = self.mux.resolve(body.type)
        if entry is None:
            if self.on_unknown is not None:  # noted for `aqueue stats` and the dashboard
                await self.on_unknown(task.queue, body.type)
            # Retried, not archived: a newer worker may know this type.
            outcome = await self._failed(task, self._unknown(body.type), None)
            if outcome.delay > UNKNOWN_TYPE_MAX_DELAY:
                outcome = replace(outcome, delay=UNKNOWN_TYPE_MAX_DELAY)
            return outcome
        now = time.time()
        limit = body.timeout or math.inf
        if body.deadline:
            left = body.deadline / 1000 - now
            if left <= 0:
                return Outcome(
                    Kind.ARCHIVE,
                    error=f"deadline {from_ms(body.deadline)} passed before the task started",
                )
            limit = min(limit, left)
        handler = entry.handler
        task.ctx = ctx = _context(task, progress, now, limit)
        payload: Any = None
        if handler.takes_payload:
            try:
                payload = decode_payload(body.payload, handler.payload_type)
            except (msgspec.ValidationError, msgspec.DecodeError) as e:
                tp = getattr(handler.payload_type, "__name__", handler.payload_type)
                return await self._archive(ctx, InvalidPayload(f"invalid payload for {tp}: {e}"))
        scope = deadline_scope(limit)  # anyio's, without a backend lookup per task
        task.scope = scope
        try:
            with scope:
                result = await self._call(entry, ctx, payload)
        except Revoke:
            return _REVOKED
        except SkipRetry as e:
            return await self._archive(ctx, e)
        except Retry as e:
            return await self._failed(task, e, ctx, delay=e.delay)
        except Exception as e:
            if task.reason is not None:
                return self._interrupted(task)
            return await self._failed(task, e, ctx)
        if scope.cancelled_caught or task.reason is not None:
            if task.reason is not None:
                return self._interrupted(task)
            return await self._failed(task, _timed_out(body, limit), ctx)
        if body.retention > 0 and result is not None:
            try:
                return Outcome(Kind.ACK, result=encode_value(result))
            except (TypeError, ValueError) as e:
                error = f"the result {result!r:.80} cannot be encoded: {e}"
                return Outcome(Kind.ARCHIVE, error=error)
        return _ACKED

    def _unknown(self, task_type: str) -> LookupError:
        known = ", ".join(self.mux.names) or "none"
        return LookupError(f"no handler for task type {task_type!r} (this worker knows: {known})")

    async def _call(self, entry: _Entry, ctx: Context, payload: Any) -> Any:
        handler = entry.handler
        fn = handler.fn
        args = (ctx, payload) if handler.takes_payload else (ctx,)
        middleware = entry.middleware()
        if not middleware and handler.is_async:
            return await fn(*args)  # the common case, without a closure per call

        async def call() -> Any:
            if handler.is_async:
                return await fn(*args)
            return await anyio.to_thread.run_sync(
                functools.partial(fn, *args), abandon_on_cancel=True, limiter=self.limiter
            )

        if not middleware:
            return await call()

        async def step(i: int) -> Any:
            if i == len(middleware):
                return await call()
            return await middleware[i](ctx, lambda: step(i + 1))

        return await step(0)

    async def _archive(self, ctx: Context | None, exc: BaseException) -> Outcome:
        """Archive at once (no retry can help), telling ``on_error`` first."""
        if ctx is not None and self.on_error is not None:
            await self._call_on_error(ctx, exc)
        return Outcome(Kind.ARCHIVE, error=_describe(exc))

    def _interrupted(self, task: Claimed) -> Outcome:
        if task.reason is Reason.SHUTDOWN:
            return _REQUEUED
        if task.reason is Reason.CANCEL:
            return _CANCELLED
        return _DROPPED

    async def _failed(
        self, task: Claimed, exc: BaseException, ctx: Context | None, delay: float | None = None
    ) -> Outcome:
        error = _describe(exc)
        if ctx is not None and self.on_error is not None:
            await self._call_on_error(ctx, exc)
        benign = (
            not isinstance(exc, Retry)
            and self.is_failure is not None
            and not _safe(self.is_failure, exc)
        )
        if benign:
            # is_failure said no: try again without spending a retry.
            return Outcome(Kind.AGAIN, error=error, delay=self._delay(task, exc, delay))
        if task.retried >= task.max_retry:
            return Outcome(Kind.ARCHIVE, error=error)
        return Outcome(Kind.RETRY, error=error, delay=self._delay(task, exc, delay))

    def _delay(self, task: Claimed, exc: BaseException, delay: float | None) -> float:
        if delay is not None:
            return delay
        try:
            return max(0.0, float(self.retry_delay(task.retried, exc, task.info("retry"))))
        except Exception:
            log.exception("retry_delay raised for task %s; using the default delay", task.id)
            return default_retry_delay(task.retried, exc, task.info("retry"))

    async def _call_on_error(self, ctx: Context, exc: BaseException) -> None:
        on_error = self.on_error
        assert on_error is not None
        try:
            outcome = on_error(ctx, exc)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            log.exception("on_error raised while handling task %s", ctx.task_id)


def _context(task: Claimed, progress: ProgressSink | None, now: float, limit: float) -> Context:
    body = task.body
    return Context(
        task_id=task.id,
        task_type=body.type,
        queue=task.queue,
        retry_count=task.retried,
        max_retry=task.max_retry,
        deadline_ms=int((now + limit) * 1000) if limit != math.inf else 0,
        enqueued_at_ms=body.enqueued_at,
        headers=body.headers or _NO_HEADERS,
        progress=progress,
        priority=task.priority,
        limit_key=task.limit_key or None,
        flow_id=task.step.rpartition(":")[0] or None,
        inputs=_inputs(task),
    )


def _inputs(task: Claimed) -> Any:
    """``ctx.inputs``: a workflow step's dependencies' results when it has a payload of its
    own (else they are its payload); ``[]`` for a step without dependencies."""
    if not task.step:
        return None
    inputs = task.body.inputs
    return inputs if inputs is not None else []


def _timed_out(body: Body, limit: float) -> TimeoutError:
    if body.deadline and limit < (body.timeout or math.inf):
        return TimeoutError(f"task passed its deadline {from_ms(body.deadline)}")
    return TimeoutError(f"task timed out after {limit:g} s")


def _safe(fn: IsFailure, exc: BaseException) -> bool:
    try:
        return bool(fn(exc))
    except Exception:
        log.exception("is_failure raised; counting the error as a failure")
        return True


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
