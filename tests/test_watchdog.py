"""The Broker's call deadlines (``_deadline.Watchdog``) against a really frozen server: a
call past its deadline raises BrokerUnavailable and leaves its task uncancelled, and a
caller's own cancellation still wins over it."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import anyio
import pytest

import aqueue
from aqueue.server import EmbeddedServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def frozen() -> Iterator[EmbeddedServer]:
    """A server that accepts connections and then answers nothing (SIGSTOP)."""
    server = EmbeddedServer().start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
        server.close()


def freeze(server: EmbeddedServer) -> None:
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)


async def test_a_call_past_its_deadline_raises_and_leaves_its_task_usable(
    frozen: EmbeddedServer,
) -> None:
    async with aqueue.Client(frozen.url, timeout=0.3) as client:
        await client.enqueue("t")  # connected
        freeze(frozen)
        with anyio.CancelScope() as outer:
            start = time.monotonic()
            with pytest.raises(aqueue.BrokerUnavailable, match="did not answer within 0.3 s"):
                await client.enqueue("t")
            took = time.monotonic() - start
            await anyio.sleep(0.01)  # the task is not left cancelled
        assert not outer.cancelled_caught
        assert 0.3 <= took < 1.5, took


async def test_the_callers_own_cancellation_wins_over_the_deadline(
    frozen: EmbeddedServer,
) -> None:
    async with aqueue.Client(frozen.url, timeout=5) as client:
        await client.enqueue("t")
        freeze(frozen)
        start = time.monotonic()
        with anyio.move_on_after(0.2) as scope:
            await client.enqueue("t")
        assert scope.cancelled_caught  # cancelled, not BrokerUnavailable
        assert time.monotonic() - start < 2.0


async def test_calls_in_many_tasks_each_get_their_own_deadline(frozen: EmbeddedServer) -> None:
    async with aqueue.Client(frozen.url, timeout=0.3) as client:
        await client.enqueue("t")
        freeze(frozen)
        failures: list[BaseException] = []

        async def one() -> None:
            try:
                await client.enqueue("t")
            except aqueue.BrokerUnavailable as exc:
                failures.append(exc)

        start = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
        assert len(failures) == 20
        assert time.monotonic() - start < 2.0
