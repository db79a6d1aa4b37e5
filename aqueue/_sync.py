"""``SyncClient``: the ``Client`` for code without an event loop (Django and Flask views,
management commands, scripts).

Design: each SyncClient owns one private event loop on a daemon thread, started on its
first call, with one ``Client`` living on that loop. A call submits the Client's
coroutine to the loop (``asyncio.run_coroutine_threadsafe``) and blocks on the result.
So every call, from any number of threads, shares one connection pool and the Client's
tested code path (same options, same errors, same round trips); threads block only on
their own call, and the loop runs their calls concurrently.

Why not ``asyncio.run`` per call: a new loop each time could not reuse connections
(redis.asyncio's are bound to the loop that opened them), so every call would pay a
connect, and concurrent threads would each hold a pool. Why not redis-py's sync client:
that would be a second implementation of every producer path to keep in step.

Fork (gunicorn, uWSGI and Celery-style preforking servers): threads do not survive a
fork, and the loop's epoll instance and sockets would be shared with the parent. A
SyncClient used in the parent leaves its loop behind in the child, untouched and never
closed there (closing it would unregister the parent's file descriptors from the epoll
instance both processes share), and the child's first call starts a loop of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, overload

from ._client import Client, Job
from ._flow import Element, FlowInfo
from ._flows import DEFAULT_RETENTION as DEFAULT_FLOW_RETENTION
from ._mux import Handler
from ._producer import DEFAULT_MAX_PAYLOAD
from ._redis.broker import DEFAULT_PREFIX, DEFAULT_URL, redacted
from ._task import TaskInfo
from .errors import AqueueError, InvalidOption

P = TypeVar("P")
T = TypeVar("T")

# How long close() waits for the Client's connections to close before it stops the
# loop anyway (on top of the Client's own timeout).
_CLOSE_GRACE = 1.0
# Seconds between two cancellations of a call that close() is ending.
_RECANCEL = 0.05


class SyncClient:
    """A blocking ``Client``: the same methods, options and errors, no event loop needed.

    Safe to share between threads: create one per process (a module-level object in a
    Django or Flask app) and call it from any thread. It connects on first use;
    ``close()`` (or leaving a ``with`` block) closes its connections and stops its
    thread, and a later call starts them again. Called from a thread that is running
    an event loop, a method raises ``AqueueError``: blocking there would stall that
    loop, so use ``Client`` (``await client.enqueue(...)``) in async code.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = 5.0,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD,
        defaults: Mapping[str, Any] | None = None,
        prefix: str = DEFAULT_PREFIX,
        durable: bool = False,
    ) -> None:
        if not isinstance(url, str):
            # A redis.asyncio client belongs to the event loop it is used on; this
            # object's loop is private, and is replaced after a fork.
            raise InvalidOption(
                f"SyncClient takes a server URL, got {url!r}: pass the URL (or use "
                "aqueue.Client with a redis.asyncio client in async code)"
            )
        options: dict[str, Any] = {
            "timeout": timeout, "max_payload_bytes": max_payload_bytes,
            "defaults": defaults, "prefix": prefix, "durable": durable,
        }  # fmt: skip
        Client(url, **options)  # checks the URL and options now, in the caller's thread
        self.url = url
        self._options = options
        self._lock = threading.Lock()
        self._loop: _Loop | None = None
        _INSTANCES.add(self)

    def __repr__(self) -> str:
        return f"SyncClient({redacted(self.url)!r})"

    # -- the Client's methods, blocking ---------------------------------------------------

    @overload
    def enqueue(
        self, task: Handler[P, Any], payload: P = ..., *, durable: bool | None = ..., **options: Any
    ) -> TaskInfo: ...
    @overload
    def enqueue(
        self, task: str, payload: Any = None, *, durable: bool | None = ..., **options: Any
    ) -> TaskInfo: ...
    def enqueue(
        self,
        task: Handler[Any, Any] | str,
        payload: Any = None,
        *,
        durable: bool | None = None,
        **options: Any,
    ) -> TaskInfo:
        """``Client.enqueue``, blocking."""
        return self._call("enqueue", lambda c: c.enqueue(task, payload, durable=durable, **options))

    @overload
    def enqueue_many(
        self,
        jobs: Iterable[Job[Any]],
        *,
        return_exceptions: Literal[False] = ...,
        durable: bool | None = ...,
    ) -> list[TaskInfo]: ...
    @overload
    def enqueue_many(
        self,
        jobs: Iterable[Job[Any]],
        *,
        return_exceptions: Literal[True],
        durable: bool | None = ...,
    ) -> list[TaskInfo | AqueueError]: ...
    def enqueue_many(
        self,
        jobs: Iterable[Job[Any]],
        *,
        return_exceptions: bool = False,
        durable: bool | None = None,
    ) -> list[TaskInfo] | list[TaskInfo | AqueueError]:
        """``Client.enqueue_many``, blocking. ``jobs`` is read in the calling thread."""
        jobs = list(jobs)
        if return_exceptions:
            return self._call(
                "enqueue_many",
                lambda c: c.enqueue_many(jobs, return_exceptions=True, durable=durable),
            )
        return self._call("enqueue_many", lambda c: c.enqueue_many(jobs, durable=durable))

    def enqueue_flow(
        self,
        flow: Element,
        *,
        flow_id: str | None = None,
        retention: float = DEFAULT_FLOW_RETENTION,
    ) -> FlowInfo:
        """``Client.enqueue_flow``, blocking: write a workflow and start its first steps."""
        return self._call(
            "enqueue_flow", lambda c: c.enqueue_flow(flow, flow_id=flow_id, retention=retention)
        )

    def flow(self, flow_id: str) -> FlowInfo:
        """``Client.flow``, blocking: a workflow as stored now."""
        return self._call("flow", lambda c: c.flow(flow_id))

    def result(
        self,
        info_or_id: TaskInfo | FlowInfo | str,
        *,
        queue: str = "default",
        timeout: float | None = None,
        on_progress: Callable[[Any], Any] | None = None,
    ) -> Any:
        """``Client.result``, blocking: wait for a task's final state and return its
        handler's return value. ``on_progress`` runs on this SyncClient's own thread:
        keep it short and do not call the SyncClient from it."""
        return self._call(
            "result",
            lambda c: c.result(info_or_id, queue=queue, timeout=timeout, on_progress=on_progress),
        )

    def cancel(self, queue: str, task_id: str) -> None:
        """``Client.cancel``, blocking."""
        self._call("cancel", lambda c: c.cancel(queue, task_id))

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections and stop the thread. A call still waiting in another
        thread raises ``AqueueError``; a later call starts afresh. Unlike the calls,
        this may run in async code: it blocks only while the connections close."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the one way in -------------------------------------------------------------------

    def _call(self, name: str, call: Callable[[Client], Awaitable[T]]) -> T:
        """Run ``call(client)`` on this object's loop and wait for its result: every
        public method is one call of this, ``name`` being the Client method it wraps."""
        _refuse_in_event_loop(name)
        while True:
            loop = self._running_loop()
            future = loop.submit(call)
            if future is not None:
                break
            # close() took that loop away between the two lines above: use a new one.
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise AqueueError(
                f"{self!r} was closed while this call waited for the server"
            ) from None
        except BaseException:
            future.cancel()  # a KeyboardInterrupt in this thread stops the call too
            raise

    def _running_loop(self) -> _Loop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                self._loop = _Loop(self, Client(self.url, **self._options))
            return self._loop

    def _forget_after_fork(self) -> None:
        """In a forked child: drop the parent's loop without touching it (see the module
        docstring), and the lock, which another thread may have held at the fork."""
        self._lock = threading.Lock()
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.abandon()


class _Loop:
    """One event loop on a daemon thread and the Client that lives on it."""

    def __init__(self, owner: SyncClient, client: Client) -> None:
        self.client = client
        self.loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._closed = False
        # The futures of the calls in flight: each is cancelled, at the latest, once
        # the loop has stopped, so that no caller waits forever on a closed loop.
        self._calls: set[concurrent.futures.Future[Any]] = set()
        self.thread = threading.Thread(
            target=self._run, name=f"aqueue-sync-client-{id(owner):x}", daemon=True
        )
        self.thread.start()
        # Closes the loop if its SyncClient is garbage collected or the interpreter
        # exits without close(): holds no reference to the SyncClient itself.
        self._finalizer = weakref.finalize(owner, self._stop)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def submit(
        self, coro_fn: Callable[[Client], Awaitable[T]]
    ) -> concurrent.futures.Future[T] | None:
        """Start ``coro_fn(client)`` on the loop; None if the loop is closing."""
        with self._lock:
            if self._closed:
                return None

            async def call() -> T:
                return await coro_fn(self.client)

            future = asyncio.run_coroutine_threadsafe(call(), self.loop)
            self._calls.add(future)
        future.add_done_callback(self._calls.discard)
        return future

    def close(self) -> None:
        self._finalizer()

    def abandon(self) -> None:
        """In a forked child, where the loop's thread does not exist: never close it."""
        self._finalizer.detach()
        _ABANDONED.append(self)

    def _stop(self) -> None:
        with self._lock:
            self._closed = True
        if threading.current_thread() is self.thread:
            # Garbage collected on its own thread: nobody can wait here. Stop the loop
            # once the Client is closed; the thread ends by itself.
            task = self.loop.create_task(self._shutdown())
            task.add_done_callback(lambda _: self.loop.stop())
            return
        done = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        # Best effort: after a timeout or a failed goodbye the thread stops all the same.
        with contextlib.suppress(Exception):
            done.result(timeout=self.client.broker.timeout + _CLOSE_GRACE)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        for future in list(self._calls):
            future.cancel()

    async def _shutdown(self) -> None:
        """Cancel the calls still running (their callers get ``AqueueError``), then
        close the Client's connections and the threads that resolved host names."""
        this = asyncio.current_task()
        others = {t for t in asyncio.all_tasks() if t is not this}
        while others:
            # Again and again: on Python 3.11 asyncio.wait_for (which redis-py uses)
            # can swallow a cancellation that arrives as its inner call completes.
            for t in others:
                t.cancel()
            _, others = await asyncio.wait(others, timeout=_RECANCEL)
        try:
            await self.client.close()
        finally:
            await self.loop.shutdown_asyncgens()
            await self.loop.shutdown_default_executor()


def _refuse_in_event_loop(method: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise AqueueError(
        f"SyncClient.{method}() was called from a thread that is running an event loop, "
        "which it would block: in async code use aqueue.Client "
        f"(await client.{method}(...)) instead"
    )


# Every SyncClient, so that a forked child can drop what it inherited.
_INSTANCES: weakref.WeakSet[SyncClient] = weakref.WeakSet()
# Loops left behind by a fork: kept so that they are never garbage collected, and so
# never closed, in the child.
_ABANDONED: list[_Loop] = []


def _after_fork_in_child() -> None:
    for client in list(_INSTANCES):
        client._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
