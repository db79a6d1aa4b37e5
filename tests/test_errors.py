"""The error hierarchy: a bad value is an ``InvalidOption`` (also a ``ValueError``), a
refused move is a ``StateRefused`` carrying the state and what was allowed, and callers
read attributes, never messages."""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import pytest

import aqueue
import aqueue.errors
from aqueue import Client, Context, Inspector, InvalidOption, Mux, StateRefused
from aqueue._task import ACTION_STATES, Action, State, actions_for

CLOSED = "redis://127.0.0.1:1/0"  # any I/O would fail: every check comes first


async def handler(ctx: Context) -> None:
    pass


def _included_in_itself() -> None:
    mux = Mux()
    mux.include(mux)


def _registered_twice() -> None:
    mux = Mux()
    mux.handle("t", handler)
    mux.handle("t", handler)


BAD_VALUES: dict[str, Callable[[], Any]] = {
    "negative timeout": lambda: Mux().handle("t", handler, timeout=-1),
    "naive datetime": lambda: Mux().handle("t", handler, deadline=datetime(2030, 1, 1)),
    "unknown option": lambda: Mux().handle("t", handler, colour="red"),
    "not a function": lambda: Mux().handle("t", 42),  # type: ignore[arg-type]
    "wrong signature": lambda: Mux().handle("t", lambda: None),
    "empty task name": lambda: Mux().handle("", handler),
    "middleware not callable": lambda: Mux().use(42),  # type: ignore[arg-type]
    "mux includes itself": _included_in_itself,
    "name registered twice": _registered_twice,
    "bad catch_up": lambda: Mux().cron_task("* * * * *", "t", catch_up="sometimes"),
    "bad Client default": lambda: Client(CLOSED, defaults={"max_retry": -1}),
    "task_id as a Client default": lambda: Client(CLOSED, defaults={"task_id": "x"}),
    "bad max_payload_bytes": lambda: Client(CLOSED, max_payload_bytes=0),
    "neither a URL nor a client": lambda: Client(42),  # type: ignore[arg-type]
    "unsupported URL scheme": lambda: Client("http://127.0.0.1/0"),
    "bad database in URL": lambda: Client("redis://127.0.0.1:6379/db"),
    "bad port in URL": lambda: Inspector("redis://127.0.0.1:99999/0"),
    "bad TLS option in URL": lambda: Client("rediss://127.0.0.1/0?ssl_cert_reqs=maybe"),
    "bad cluster URL": lambda: Client("redis+cluster://127.0.0.1:7000/1"),
    "bad sentinel URL": lambda: Client("redis+sentinel://127.0.0.1:26379"),
}


@pytest.mark.parametrize("make", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
def test_a_bad_value_raises_invalid_option(make: Callable[[], Any]) -> None:
    with pytest.raises(InvalidOption) as caught:
        make()
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, aqueue.AqueueError)


@pytest.mark.anyio
async def test_a_bad_enqueue_option_raises_invalid_option_before_any_io() -> None:
    async with Client(CLOSED, timeout=0.5) as client:
        with pytest.raises(InvalidOption, match="-5"):
            await client.enqueue("t", process_in=-5)


@pytest.mark.anyio
async def test_a_bad_task_or_job_raises_invalid_option_before_any_io() -> None:
    async with Client(CLOSED, timeout=0.5) as client:
        with pytest.raises(InvalidOption, match="42"):
            await client.enqueue(42)  # type: ignore[call-overload]
        with pytest.raises(InvalidOption, match="index 1"):
            await client.enqueue_many([aqueue.Job("t"), "t"])  # type: ignore[list-item]


@pytest.mark.anyio
async def test_waiting_for_the_result_of_a_task_that_keeps_none_raises_invalid_option(
    aqueue_url: str,
) -> None:
    async with Client(aqueue_url) as client:
        info = await client.enqueue("t", retention=0)
        with pytest.raises(InvalidOption, match="keeps no result"):
            await client.result(info, timeout=1)


@pytest.mark.anyio
async def test_a_durable_enqueue_on_a_server_without_aof_raises_unsupported_server(
    aqueue_url: str,
) -> None:
    async with Client(aqueue_url) as client:
        with pytest.raises(aqueue.UnsupportedServer, match="appendonly off"):
            await client.enqueue("t", durable=True)


def test_the_tools_raise_invalid_option_for_a_bad_value() -> None:
    from aqueue.metrics import Exporter, QueueCollector
    from aqueue.web import dashboard

    with pytest.raises(InvalidOption, match="auth"):
        dashboard(CLOSED, auth=42)  # type: ignore[arg-type]
    with pytest.raises(InvalidOption, match="'q1'"):
        QueueCollector(CLOSED, queues="q1", registry=None)
    with pytest.raises(InvalidOption, match="70000"):
        Exporter(port=70000)


@pytest.fixture
async def inspector(aqueue_url: str) -> AsyncIterator[Inspector]:
    async with Inspector(aqueue_url) as i:
        yield i


@pytest.mark.anyio
async def test_a_refused_move_says_which_state_and_which_were_allowed(
    aqueue_url: str, inspector: Inspector
) -> None:
    async with Client(aqueue_url) as client:
        info = await client.enqueue("t")
    with pytest.raises(StateRefused, match="it is pending") as caught:
        await inspector.run_task("default", info.id)
    assert caught.value.state == "pending"
    assert caught.value.allowed == ("scheduled", "retry", "archived")
    with pytest.raises(StateRefused) as caught:
        await inspector.run_all("default", "pending")
    assert (caught.value.state, caught.value.allowed) == ("pending", ACTION_STATES[Action.RUN])
    with pytest.raises(InvalidOption, match="'done'"):
        await inspector.run_all("default", "done")


@pytest.mark.anyio
async def test_a_queue_not_empty_says_how_many_tasks_it_holds(
    aqueue_url: str, inspector: Inspector
) -> None:
    async with Client(aqueue_url) as client:
        for _ in range(3):
            await client.enqueue("t", queue="full")
    with pytest.raises(aqueue.QueueNotEmpty) as caught:
        await inspector.delete_queue("full")
    assert (caught.value.queue, caught.value.count) == ("full", 3)


def test_one_table_says_which_states_each_action_takes() -> None:
    assert actions_for(State.ACTIVE) == (Action.CANCEL,)
    assert actions_for("archived") == (Action.RUN, Action.DELETE)
    assert actions_for("completed") == (Action.DELETE,)
    # Only a task that has not ended can be cancelled; only cancel touches an active one.
    ended = {State.ARCHIVED, State.COMPLETED}
    assert set(ACTION_STATES[Action.CANCEL]) == set(State) - ended
    assert all(State.ACTIVE not in ACTION_STATES[a] for a in Action if a is not Action.CANCEL)


def test_the_module_docstring_draws_every_error() -> None:
    doc = aqueue.errors.__doc__ or ""
    drawn = set(re.findall(r"[├└]── (\w+)", doc)) | {"AqueueError"}
    classes = {
        name
        for name, obj in vars(aqueue.errors).items()
        if inspect.isclass(obj) and issubclass(obj, aqueue.AqueueError)
    }
    assert drawn == classes
