"""The round robin the worker's sweeps share (``aqueue._worker.turns``): a bounded slice
of its queues per pass, each queue in turn. Plain: no server."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from aqueue._worker.turns import Turns

NAMES = [f"q{i}" for i in range(7)]


def test_each_call_takes_the_next_n_and_wraps_around() -> None:
    turns = Turns()
    assert turns.take(NAMES, 3) == ["q0", "q1", "q2"]
    assert turns.take(NAMES, 3) == ["q3", "q4", "q5"]
    assert turns.take(NAMES, 3) == ["q6", "q0", "q1"]
    assert turns.take(NAMES, 3) == ["q2", "q3", "q4"]


@pytest.mark.parametrize("n", [7, 8, 50])
def test_n_at_least_the_names_takes_them_all_in_order_and_keeps_the_turn(n: int) -> None:
    turns = Turns()
    assert turns.take(NAMES, 3) == ["q0", "q1", "q2"]
    assert turns.take(NAMES, n) == NAMES
    assert turns.take(NAMES, n) == NAMES
    assert turns.take(NAMES, 3) == ["q3", "q4", "q5"]


def test_the_names_taken_are_a_new_list() -> None:
    names = ["a", "b"]
    taken = Turns().take(names, 5)
    taken.append("c")
    assert names == ["a", "b"]


@pytest.mark.parametrize("n", [1, 3, 50])
def test_no_names_take_nothing(n: int) -> None:
    turns = Turns()
    assert turns.take([], n) == []
    assert turns.take(NAMES, 3) == ["q0", "q1", "q2"]
    assert turns.take([], n) == []
    assert turns.take(NAMES, 3) == ["q3", "q4", "q5"]


@pytest.mark.parametrize(("count", "n"), [(7, 1), (7, 2), (7, 3), (7, 6), (10, 5), (1000, 50)])
def test_every_name_is_taken_within_ceil_count_over_n_calls(count: int, n: int) -> None:
    names = [f"q{i}" for i in range(count)]
    turns = Turns()
    turns.take(names, n)  # from wherever the turn stands
    calls = math.ceil(count / n)
    for _ in range(3):
        seen = [q for _ in range(calls) for q in turns.take(names, n)]
        assert set(seen) == set(names)
        assert len(seen) == calls * n


@pytest.mark.parametrize(
    ("before", "change", "after"),
    [
        pytest.param(
            1,
            lambda names: names.remove("q1"),
            [["q3", "q4", "q5"], ["q6", "q0", "q2"]],
            id="one taken removed",
        ),
        pytest.param(
            1,
            lambda names: names.remove("q5"),
            [["q3", "q4", "q6"], ["q0", "q1", "q2"]],
            id="one not taken yet removed",
        ),
        pytest.param(
            1,
            lambda names: names.remove("q3"),
            [["q4", "q5", "q6"], ["q0", "q1", "q2"]],
            id="the next removed: its follower is next",
        ),
        pytest.param(
            2,
            lambda names: names.remove("q6"),
            [["q0", "q1", "q2"]],
            id="the next and last removed: the turn wraps around",
        ),
        pytest.param(
            1,
            lambda names: names.insert(0, "new"),
            [["q3", "q4", "q5"], ["q6", "new", "q0"]],
            id="one added before the turn",
        ),
        pytest.param(
            1,
            lambda names: names.append("new"),
            [["q3", "q4", "q5"], ["q6", "new", "q0"]],
            id="one added after the turn",
        ),
    ],
)
def test_names_added_or_removed_between_calls_do_not_move_the_turn(
    before: int, change: Callable[[list[str]], None], after: list[list[str]]
) -> None:
    turns = Turns()
    names = list(NAMES)
    for _ in range(before):
        turns.take(names, 3)
    change(names)
    assert [turns.take(names, 3) for _ in after] == after


def test_names_shrunk_to_n_or_fewer_are_taken_whole_then_the_turn_goes_on() -> None:
    turns = Turns()
    names = list(NAMES)
    assert turns.take(names, 3) == ["q0", "q1", "q2"]
    assert turns.take(["q3", "q4"], 3) == ["q3", "q4"]
    assert turns.take(names, 3) == ["q3", "q4", "q5"]


def test_after_names_change_every_one_is_taken_within_ceil_count_over_n_calls() -> None:
    turns = Turns()
    names = [f"q{i}" for i in range(20)]
    for step in range(30):
        turns.take(names, 4)
        if step % 3 == 0:
            names.remove(names[(step * 7) % len(names)])
            names.insert((step * 5) % len(names), f"new{step}")
        else:
            calls = math.ceil(len(names) / 4)
            seen = {q for _ in range(calls) for q in turns.take(names, 4)}
            assert seen == set(names)
