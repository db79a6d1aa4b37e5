"""How aqueue's own connections pack commands (``aqueue/_redis/wire.py``, ``pack``): the
bytes of every command are those of RESP written out plainly (``resp`` below), whether
hiredis packs the command or Python does; what the server cannot be sent is refused by
name, and no argument crashes the process (hiredis does on an int too long to print).
"""

from __future__ import annotations

import enum
import random
import sys
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import pytest

from aqueue._redis import wire
from aqueue._redis.wire import pack


def resp(commands: Sequence[Sequence[Any]]) -> bytes:
    """RESP as the protocol describes it: an array of bulk strings per command; strings
    in UTF-8, numbers as ``repr`` writes them (as redis-py's encoder does)."""
    out = bytearray()
    for cmd in commands:
        out += b"*" + str(len(cmd)).encode() + b"\r\n"
        for arg in cmd:
            if isinstance(arg, bytes):
                data = arg
            elif isinstance(arg, str):
                data = arg.encode("utf-8")
            else:
                data = repr(arg).encode("ascii")
            out += b"$" + str(len(data)).encode() + b"\r\n" + data + b"\r\n"
    return bytes(out)


STRINGS = ["", " ", "EVALSHA", "aq:{default}:pending", "é", "日本語", "𝄞 emoji 🎉", "a\r\nb",
           "\x00", "$3\r\n", "*1", "x" * 70_000, "ü" * 40_000]  # fmt: skip
BYTES = [b"", b"\x00", b"\r\n", b"\xff\xfe", b"25||0|10|0|0|t\x98\xaa", bytes(range(256)) * 9]
INTS = [0, 1, -1, 5, 1_796_496_180_085, 2**31, -(2**31), 2**63 - 1, 2**63, -(2**63), 2**64,
        -(2**100), 10**639 - 1, -(10**639) + 1, 10**600]  # fmt: skip
FLOATS = [0.0, -0.0, 0.1, 0.5, -1.5, 1.0, 1e16, 1e-7, 123456.789, 1.7976931348623157e308,
          5e-324, -2.5e-10, float("inf"), float("-inf"), float("nan")]  # fmt: skip


def commands(seed: int, count: int) -> Iterator[tuple[Any, ...]]:
    """``count`` commands of 1 to 20 arguments drawn from all the kinds above."""
    rnd = random.Random(seed)
    kinds: list[list[Any]] = [STRINGS, BYTES, INTS, FLOATS]
    for _ in range(count):
        name = rnd.choice(["EVALSHA", "HINCRBY", "PUBLISH", "SADD", ""])
        yield (name, *(rnd.choice(rnd.choice(kinds)) for _ in range(rnd.randrange(20))))


def test_an_enqueue_is_packed_as_resp_writes_it() -> None:
    cmd = ("EVALSHA", "f6f8a02cd05dd022b10817b2195cd9e00cb1de90", 5, "aq:{default}:pending",
           "aq:{default}:scheduled", "aq:{default}:tasks", "aq:{default}:states",
           "aq:{default}:bell", "plain", 1796496180085, "PzHqzcVN-Wlv2xjd",
           b"25||0|10|0|0|send_email\x98\xaasend_email\x82\xa2to\xb0u@example.com", 0)  # fmt: skip
    assert pack([cmd]) == resp([cmd])
    assert pack([cmd, ("SADD", "aq:queues", "default")]) == resp(
        [cmd, ("SADD", "aq:queues", "default")]
    )


@pytest.mark.parametrize("seed", range(20))
def test_commands_of_every_kind_of_argument_are_packed_as_resp_writes_them(seed: int) -> None:
    batch = list(commands(seed, 50))
    for cmd in batch:
        assert pack([cmd]) == resp([cmd]), cmd
    assert pack(batch) == resp(batch)


def test_commands_of_plain_arguments_are_packed_by_hiredis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tests above compare hiredis's bytes, not only Python's."""

    def refused(cmd: Sequence[Any]) -> bytes:
        raise AssertionError(f"packed in Python: {cmd!r:.80}")

    monkeypatch.setattr(wire, "_pack_plainly", refused)
    batch = [cmd for seed in range(20) for cmd in commands(seed, 50)]
    assert pack(batch) == resp(batch)


def test_each_kind_of_argument_alone_is_packed_as_resp_writes_it() -> None:
    for arg in [*STRINGS, *BYTES, *INTS, *FLOATS]:
        assert pack([("SET", arg)]) == resp([("SET", arg)]), arg


def test_large_arguments_are_packed_whole() -> None:
    big = random.Random(1).randbytes(3 * 2**20)
    cmd = ("HSET", "k", "f", big, "g", "ß" * 2**20)
    assert pack([cmd]) == resp([cmd])


def test_no_commands_and_a_command_without_arguments() -> None:
    assert pack([]) == b""
    assert pack([()]) == b"*0\r\n"
    assert pack([("PING",)]) == b"*1\r\n$4\r\nPING\r\n"


def test_a_command_given_as_a_list_is_packed_as_a_tuple_is() -> None:
    assert pack([["LPUSH", "k", 1, 2.5, b"v"]]) == resp([("LPUSH", "k", 1, 2.5, b"v")])


class Kind(enum.StrEnum):
    RETRY = "retry"


class Text(str):
    pass


class Blob(bytes):
    pass


def test_str_and_bytes_subclasses_go_as_their_value() -> None:
    """The worker passes ``StrEnum`` members as script arguments."""
    cmd = ("EVALSHA", "sha", 0, Kind.RETRY, Text("t"), Blob(b"b"), 7)
    assert pack([cmd]) == resp([("EVALSHA", "sha", 0, "retry", "t", b"b", 7)])


def test_an_int_too_long_to_print_is_refused_not_a_crash() -> None:
    """hiredis crashes the process on an int whose digits pass the interpreter's limit:
    such an int goes the Python way, which raises the interpreter's ``ValueError``."""
    with pytest.raises(ValueError, match="limit"):
        pack([("SET", "k", 10**5000)])
    with pytest.raises(ValueError, match="limit"):
        pack([("SET", "k", -(10**5000))])


def test_ints_up_to_the_lowest_printing_limit_are_packed_under_it() -> None:
    before = sys.get_int_max_str_digits()
    lowest = sys.int_info.str_digits_check_threshold
    sys.set_int_max_str_digits(lowest)
    try:
        longest = 10**lowest - 1
        assert pack([("SET", "k", longest, -longest)]) == resp([("SET", "k", longest, -longest)])
        with pytest.raises(ValueError, match="limit"):
            pack([("SET", "k", longest + 1)])
    finally:
        sys.set_int_max_str_digits(before)


def test_ints_longer_than_that_are_packed_where_the_limit_allows() -> None:
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # no limit
    try:
        huge = 7 * 10**5000
        assert pack([("SET", "k", huge, -huge)]) == resp([("SET", "k", huge, -huge)])
    finally:
        sys.set_int_max_str_digits(before)


class Unprintable(float):
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_a_float_subclass_that_cannot_print_itself_raises_not_a_crash() -> None:
    with pytest.raises(RuntimeError, match="no repr"):
        pack([("SET", "k", Unprintable(1.5))])


REFUSED = [True, False, None, bytearray(b"ab"), memoryview(b"ab"), ["a"], {"a": 1},
           Decimal("1.5"), object()]  # fmt: skip


@pytest.mark.parametrize("arg", REFUSED, ids=lambda arg: type(arg).__name__)
def test_an_argument_of_another_type_is_refused_by_name(arg: object) -> None:
    """Not sent as something the caller did not mean (``True`` as ``True``, a
    memoryview as its bytes): a ``TypeError`` naming the type, before anything is sent."""
    with pytest.raises(TypeError, match=f"cannot send {type(arg).__name__} "):
        pack([("SET", "k", "v"), ("SET", "k", arg)])


def test_a_str_that_is_not_valid_unicode_is_refused() -> None:
    with pytest.raises(UnicodeEncodeError, match="surrogates not allowed"):
        pack([("SET", "k", "\ud800")])
