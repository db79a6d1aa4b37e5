"""Mux: registration, routing, payload typing and middleware."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

import aqueue
from aqueue import Context, Mux


class Point(msgspec.Struct):
    x: int
    y: int


async def _noop(ctx: Context) -> None:
    return None


def test_decorator_returns_a_handler_that_still_calls_the_function() -> None:
    mux = Mux()

    @mux.task("add", queue="math", max_retry=3)
    def add(ctx: Context, p: Point) -> int:
        return p.x + p.y

    assert isinstance(add, aqueue.Handler)
    assert add.name == "add"
    assert add.options == {"queue": "math", "max_retry": 3}
    assert add.payload_type is Point
    assert add(None, Point(1, 2)) == 3


def test_payload_parameter_kinds() -> None:
    mux = Mux()

    async def none(ctx: Context) -> None: ...
    async def raw(ctx: Context, data: bytes) -> None: ...
    async def plain(ctx: Context, data: dict[str, int]) -> None: ...
    async def untyped(ctx, data):  # type: ignore[no-untyped-def]
        ...

    assert not mux.handle("a", none).takes_payload
    assert mux.handle("b", raw).payload_type is bytes
    assert mux.handle("c", plain).payload_type == dict[str, int]
    assert mux.handle("d", untyped).payload_type is Any


def test_same_name_twice_is_refused() -> None:
    mux = Mux()
    mux.handle("email:send", _noop)
    with pytest.raises(aqueue.AqueueError, match="'email:send' is already registered"):
        mux.handle("email:send", _noop)


def test_handler_with_wrong_signature_is_refused() -> None:
    mux = Mux()

    async def three(ctx: Context, a: int, b: int) -> None: ...

    with pytest.raises(aqueue.AqueueError, match="must take \\(ctx\\) or \\(ctx, payload\\)"):
        mux.handle("bad", three)


def test_bad_handler_option_is_refused_at_registration() -> None:
    mux = Mux()
    with pytest.raises(aqueue.AqueueError, match="max_retry must be an int >= 0, got -1"):
        mux.handle("x", _noop, max_retry=-1)
    with pytest.raises(aqueue.AqueueError, match="task_id"):
        mux.handle("y", _noop, task_id="fixed")
    with pytest.raises(aqueue.InvalidQueueName, match="'bad queue'"):
        mux.handle("z", _noop, queue="bad queue")


def test_exact_name_beats_patterns_and_longest_pattern_wins() -> None:
    mux = Mux()
    generic = mux.handle("email:", _noop)
    special = mux.handle("email:bulk:", _noop)
    exact = mux.handle("email:bulk:weekly", _noop)

    def served(name: str) -> aqueue.Handler[Any, Any] | None:
        entry = mux.resolve(name)
        return entry.handler if entry else None

    assert served("email:send") is generic
    assert served("email:bulk:daily") is special
    assert served("email:bulk:weekly") is exact
    assert served("sms:send") is None
    assert "email:x" in mux and "sms:x" not in mux


def test_include_brings_handlers_and_refuses_clashes() -> None:
    a, b = Mux(), Mux()
    a.handle("one", _noop)
    b.handle("two", _noop)
    a.include(b)
    assert a.names == ["one", "two"]
    c = Mux()
    c.handle("two", _noop)
    with pytest.raises(aqueue.AqueueError, match="'two'"):
        a.include(c)
    with pytest.raises(aqueue.AqueueError, match="itself"):
        a.include(a)


def test_middleware_order_outer_mux_first_then_included_mux() -> None:
    outer, inner = Mux(), Mux()
    inner.handle("t", _noop)

    async def mw_outer(ctx: Context, call_next: Any) -> Any:
        return await call_next()

    async def mw_inner(ctx: Context, call_next: Any) -> Any:
        return await call_next()

    inner.use(mw_inner)
    outer.include(inner)
    outer.use(mw_outer)  # added after include: still applies
    entry = outer.resolve("t")
    assert entry is not None
    assert entry.middleware() == [mw_outer, mw_inner]
