"""Flow control, the model (SPEC §6): Rates, priority and limit_key options, limit
declarations on a Mux and the text the scripts read. Pure: no server, no event loop."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import msgspec
import pytest

import aqueue
from aqueue import Context, InvalidOption, LimitInfo, Mux, Rate, TaskInfo
from aqueue._limits import LimitSpec, check_concurrency, check_limit_key
from aqueue._options import Resolved, check_options, resolve

NOW = 1_700_000_000_000


class Report(msgspec.Struct):
    tenant: str


async def _noop(ctx: Context) -> None:
    return None


async def _build(ctx: Context, r: Report) -> None:
    return None


# -- Rate ----------------------------------------------------------------------------------


def test_rate_defaults_to_one_second_and_keeps_per_as_float_seconds() -> None:
    assert Rate(10) == Rate(10, per=1.0)
    assert Rate(90, per=60) == Rate(90, per=60.0)
    assert isinstance(Rate(90, per=60).per, float)
    assert Rate(1, per=timedelta(seconds=1.5)).per == 1.5
    assert Rate(90, per=timedelta(minutes=1)) == Rate(90, per=60.0)


def test_rates_compare_and_hash_by_value() -> None:
    assert Rate(10) != Rate(10, per=2.0)
    assert Rate(10) != Rate(11)
    assert len({Rate(90, per=60), Rate(90, per=60.0), Rate(90, per=timedelta(minutes=1))}) == 1


def test_rate_is_immutable() -> None:
    rate = Rate(10)
    with pytest.raises(AttributeError):
        rate.limit = 11  # type: ignore[misc]


def test_rate_repr_and_str_show_its_values() -> None:
    assert repr(Rate(90, per=60.0)) == "Rate(limit=90, per=60.0)"
    assert str(Rate(10)) == "10/s"
    assert str(Rate(90, per=60.0)) == "90/m"
    assert str(Rate(5, per=3600.0)) == "5/h"
    assert str(Rate(1, per=1.5)) == "1/1.5s"


@pytest.mark.parametrize("limit", [0, -1, True, 1.5, "10", None])
def test_rate_refuses_a_bad_limit_naming_it(limit: Any) -> None:
    with pytest.raises(InvalidOption, match=f"Rate limit must be an int >= 1, got {limit!r}"):
        Rate(limit)


@pytest.mark.parametrize(
    "per", [0, 0.0, -1.0, math.inf, math.nan, "1", None, True, timedelta(0), timedelta(-1)]
)
def test_rate_refuses_a_bad_per_naming_it(per: Any) -> None:
    with pytest.raises(InvalidOption, match="Rate per must be a finite number of seconds > 0"):
        Rate(1, per=per)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10/s", Rate(10)),
        ("90/m", Rate(90, per=60.0)),
        ("5/h", Rate(5, per=3600.0)),
        ("  90 / m ", Rate(90, per=60.0)),
        ("007/s", Rate(7)),
    ],
)
def test_rate_strings_parse_to_rates(text: str, expected: Rate) -> None:
    assert Rate.parse(text, "test") == expected


def test_parsing_a_rate_returns_it() -> None:
    rate = Rate(3, per=2.0)
    assert Rate.parse(rate, "test") is rate


@pytest.mark.parametrize(
    "value",
    [
        "10/x",
        "0/s",
        "abc",
        "",
        "1.5/s",
        "-1/s",
        "10/sec",
        "10/S",
        "10",
        "9" * 5000 + "/s",
        5,
        None,
        1.0,
    ],
)
def test_a_bad_rate_is_refused_naming_the_value_and_where_it_came_from(value: Any) -> None:
    with pytest.raises(InvalidOption) as caught:
        Rate.parse(value, "task 'contacts:sync'")
    assert repr(value) in str(caught.value)
    assert "(task 'contacts:sync')" in str(caught.value)


# -- concurrency limits and limit keys --------------------------------------------------


@pytest.mark.parametrize("value", [1, 3, 10_000])
def test_a_concurrency_limit_is_an_int_of_at_least_one(value: int) -> None:
    assert check_concurrency(value, "test") == value


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "2", None])
def test_a_bad_concurrency_limit_is_refused_naming_it(value: Any) -> None:
    with pytest.raises(InvalidOption, match=f"got {value!r} \\(test\\)"):
        check_concurrency(value, "test")


@pytest.mark.parametrize("value", ["acme", "x" * 200, "tenant:é:42", "with space"])
def test_a_limit_key_is_a_short_string(value: str) -> None:
    assert check_limit_key(value, "test") == value


@pytest.mark.parametrize(
    "value", ["", "x" * 201, "a\x01b", "a\x02", "tab\there", "new\nline", "\x7f", 5, b"acme", None]
)
def test_a_bad_limit_key_is_refused_naming_it(value: Any) -> None:
    with pytest.raises(InvalidOption) as caught:
        check_limit_key(value, "enqueue")
    assert repr(value) in str(caught.value)


# -- priority and limit_key as options ---------------------------------------------------


@pytest.mark.parametrize("value", [0, 5, 9])
def test_priority_is_an_int_from_0_to_9(value: int) -> None:
    check_options({"priority": value}, "enqueue")
    assert resolve({"priority": value}, {}, {}, NOW).priority == value


@pytest.mark.parametrize("value", [-1, 10, True, 1.5, "5"])
def test_a_bad_priority_is_refused_naming_it(value: Any) -> None:
    message = f"priority must be an int from 0 to 9, got {value!r} (enqueue)"
    with pytest.raises(InvalidOption) as caught:
        check_options({"priority": value}, "enqueue")
    assert str(caught.value) == message


def test_explicit_priority_and_limit_key_beat_the_handlers_and_default_to_none() -> None:
    handler = {"priority": 5, "limit_key": "h"}
    assert resolve({}, {}, {}, NOW).priority == 0
    assert resolve({}, {}, {}, NOW).limit_key == ""
    assert resolve({}, handler, {}, NOW).priority == 5
    picked = resolve({"priority": 0, "limit_key": "e"}, handler, {"priority": 9}, NOW)
    assert (picked.priority, picked.limit_key) == (0, "e")


def test_a_limit_key_callable_is_taken_only_from_a_handler() -> None:
    check_options({"limit_key": str}, "task 'x'", handler=True)
    with pytest.raises(InvalidOption, match="got <class 'str'> \\(enqueue\\)"):
        check_options({"limit_key": str}, "enqueue")
    with pytest.raises(InvalidOption, match="a str or a callable .* got 5 \\(task 'x'\\)"):
        check_options({"limit_key": 5}, "task 'x'", handler=True)
    with pytest.raises(InvalidOption, match="got 'a\\\\x01' \\(task 'x'\\)"):
        check_options({"limit_key": "a\x01"}, "task 'x'", handler=True)


def test_a_handlers_limit_key_callable_is_applied_to_the_payload() -> None:
    handler = {"limit_key": lambda r: r.tenant}
    assert resolve({}, handler, {}, NOW, payload=Report(tenant="acme")).limit_key == "acme"
    assert resolve({"limit_key": "x"}, handler, {}, NOW, payload=None).limit_key == "x"


def test_a_limit_key_callable_that_raises_is_a_bad_option() -> None:
    def tenant(payload: dict[str, str]) -> str:
        return payload["tenant"]

    with pytest.raises(InvalidOption, match="limit_key callable .*tenant raised KeyError") as c:
        resolve({}, {"limit_key": tenant}, {}, NOW, payload={})
    assert isinstance(c.value.__cause__, KeyError)


@pytest.mark.parametrize("key", [5, None, "", "a\x02b", "x" * 201])
def test_a_limit_key_callable_must_return_a_valid_key(key: Any) -> None:
    with pytest.raises(InvalidOption, match="returned by the limit_key callable") as caught:
        resolve({}, {"limit_key": lambda _: key}, {}, NOW)
    assert repr(key) in str(caught.value)


def test_resolved_keeps_its_positional_fields_and_defaults_the_new_ones() -> None:
    opts = Resolved("default", 25, 1800.0, 0, 0, 0.0, "id", 0.0, None)
    assert (opts.priority, opts.limit_key) == (0, "")


# -- LimitSpec: the text the scripts read -------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (LimitSpec(Rate(10), None), "10 1000 0"),
        (LimitSpec(None, 3), "0 0 3"),
        (LimitSpec(Rate(90, per=60.0), 2), "90 60000 2"),
        (LimitSpec(Rate(1, per=1.5), None), "1 1500 0"),
        (LimitSpec(None, None), "0 0 0"),
    ],
)
def test_limit_spec_encodes_rate_limit_per_ms_and_concurrency(spec: LimitSpec, text: str) -> None:
    assert spec.encode() == text
    assert LimitSpec.decode(text) == spec
    assert LimitSpec.decode(text.encode()) == spec


def test_a_window_under_a_millisecond_is_sent_as_one() -> None:
    assert LimitSpec(Rate(1, per=0.0001), None).encode() == "1 1 0"


@pytest.mark.parametrize(
    "text",
    ["", "abc", "1 2", "1 2 3 4", "x y z", b"\xff\xfe\xfd", "1 1e3 2", "1 " + "9" * 400 + " 0"],
)
def test_garbage_decodes_as_no_limits(text: str | bytes) -> None:
    assert LimitSpec.decode(text) == LimitSpec(None, None)


# -- limits on a Mux ------------------------------------------------------------------------


def test_limits_are_kept_on_the_handler() -> None:
    mux = Mux()
    sync = mux.handle("contacts:sync", _noop, rate_limit="10/s")
    build = mux.task("report:build", concurrency_limit=2, limit_key=lambda r: r.tenant)(_build)
    plain = mux.handle("plain", _noop)
    assert sync.limits == LimitSpec(Rate(10), None)
    assert build.limits == LimitSpec(None, 2)
    assert callable(build.options["limit_key"])
    assert plain.limits is None


def test_mux_limits_lists_every_queue_it_names_with_its_limits() -> None:
    mux = Mux()
    mux.handle("contacts:sync", _noop, rate_limit=Rate(10))
    mux.handle("report:build", _build, queue="reports", concurrency_limit=2, rate_limit="90/m")
    mux.handle("mail:", _noop, queue="mail")
    mux.limit_queue("bulk", concurrency_limit=3)
    mux.limit_queue("reports", rate_limit="5/h")
    assert mux.limits() == {
        "default": {"t:contacts:sync": LimitSpec(Rate(10), None)},
        "reports": {
            "q": LimitSpec(Rate(5, per=3600.0), None),
            "t:report:build": LimitSpec(Rate(90, per=60.0), 2),
        },
        "mail": {},
        "bulk": {"q": LimitSpec(None, 3)},
    }


def test_limit_queue_again_replaces_the_queues_limits() -> None:
    mux = Mux()
    mux.limit_queue("bulk", concurrency_limit=3)
    mux.limit_queue("bulk", rate_limit="1/s")
    assert mux.limits() == {"bulk": {"q": LimitSpec(Rate(1), None)}}


def test_limit_queue_needs_a_limit_and_a_valid_queue_name() -> None:
    mux = Mux()
    with pytest.raises(InvalidOption, match="limit_queue\\('bulk'\\) needs"):
        mux.limit_queue("bulk")
    with pytest.raises(aqueue.InvalidQueueName, match="'no spaces'"):
        mux.limit_queue("no spaces", concurrency_limit=1)
    with pytest.raises(InvalidOption, match="got '10/x' \\(queue 'bulk'\\)"):
        mux.limit_queue("bulk", rate_limit="10/x")
    with pytest.raises(InvalidOption, match="got 0 \\(queue 'bulk'\\)"):
        mux.limit_queue("bulk", concurrency_limit=0)
    assert mux.limits() == {}


@pytest.mark.parametrize(
    "options",
    [
        {"rate_limit": "10/x"},
        {"concurrency_limit": 0},
        {"priority": 10},
        {"priority": -1},
        {"limit_key": "a\x01"},
        {"rate_limit": "1/s", "concurrency_limit": 1, "queue": "bad queue"},
    ],
)
def test_a_bad_limit_option_refuses_the_registration_and_registers_nothing(
    options: dict[str, Any],
) -> None:
    mux = Mux()
    with pytest.raises(aqueue.AqueueError):
        mux.handle("t", _noop, **options)
    assert "t" not in mux
    assert mux.limits() == {}


def test_limits_need_an_exact_task_type() -> None:
    mux = Mux()
    with pytest.raises(InvalidOption, match="not the pattern 'email:'"):
        mux.handle("email:", _noop, rate_limit="10/s")
    with pytest.raises(InvalidOption, match="not the pattern 'email:'"):
        mux.task("email:", concurrency_limit=1)(_noop)
    assert mux.names == []


def test_a_cron_task_can_be_limited() -> None:
    mux = Mux()
    tick = mux.cron("* * * * *", name="tick", concurrency_limit=1)(_noop)
    assert tick.limits == LimitSpec(None, 1)
    assert mux.limits() == {"default": {"t:tick": LimitSpec(None, 1)}}


def test_include_brings_the_other_muxs_limits() -> None:
    outer, inner = Mux(), Mux()
    inner.handle("report:build", _build, queue="reports", concurrency_limit=2)
    inner.limit_queue("bulk", concurrency_limit=3)
    outer.limit_queue("reports", rate_limit="1/s")
    outer.include(inner)
    assert outer.limits() == {
        "reports": {"q": LimitSpec(Rate(1), None), "t:report:build": LimitSpec(None, 2)},
        "bulk": {"q": LimitSpec(None, 3)},
    }


def test_include_accepts_an_equal_queue_limit_and_refuses_a_different_one() -> None:
    outer, same, other = Mux(), Mux(), Mux()
    outer.limit_queue("bulk", concurrency_limit=3)
    same.limit_queue("bulk", concurrency_limit=3)
    other.limit_queue("bulk", concurrency_limit=4)
    outer.include(same)
    with pytest.raises(InvalidOption, match="queue\\(s\\) \\['bulk'\\] are limited differently"):
        outer.include(other)
    assert outer.limits() == {"bulk": {"q": LimitSpec(None, 3)}}


# -- what handlers and readers see ---------------------------------------------------------


def test_context_carries_priority_limit_key_and_flow_fields() -> None:
    common: dict[str, Any] = {
        "task_id": "id",
        "task_type": "t",
        "queue": "default",
        "retry_count": 0,
        "max_retry": 25,
        "headers": {},
    }
    ctx = Context(**common)
    assert (ctx.priority, ctx.limit_key, ctx.flow_id, ctx.inputs) == (0, None, None, None)
    ctx = Context(**common, priority=9, limit_key="acme", flow_id="f", inputs=[1, 2])
    assert (ctx.priority, ctx.limit_key, ctx.flow_id, ctx.inputs) == (9, "acme", "f", [1, 2])


def test_task_info_reports_priority_limit_key_and_flow_id() -> None:
    info = TaskInfo(id="i", queue="q", type="t")
    assert (info.priority, info.limit_key, info.flow_id) == (0, None, None)
    decoded = msgspec.json.decode(
        msgspec.json.encode(TaskInfo(id="i", queue="q", type="t", priority=3, limit_key="k")),
        type=TaskInfo,
    )
    assert (decoded.priority, decoded.limit_key) == (3, "k")


def test_limit_info_round_trips_with_its_rate() -> None:
    info = LimitInfo(
        queue="default",
        task_type="contacts:sync",
        rate_limit=Rate(90, per=60.0),
        concurrency_limit=None,
        running=1,
    )
    assert info.keys == 0
    assert msgspec.json.decode(msgspec.json.encode(info), type=LimitInfo) == info
