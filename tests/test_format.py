"""Durations, times and sizes, as the CLI and the dashboard both print them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from aqueue._format import duration, duration_cell, relative, size, stamp

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("seconds", "text", "cell"),
    [
        (0.042, "42ms", "0.0s"),
        (3.25, "3.2s", "3.2s"),
        (42.5, "42.5s", "42s"),
        (310, "5m 10s", "5m10s"),
        (303, "5m 3s", "5m03s"),
        (2 * 3600 + 5 * 60 + 7, "2h 5m", "2h05m"),
        (3 * 86400 + 4 * 3600, "3d 4h", "3d04h"),
    ],
)
def test_a_duration_reads_as_text_and_fits_a_table_cell(
    seconds: float, text: str, cell: str
) -> None:
    assert duration(seconds) == text
    assert duration_cell(seconds) == cell


def test_a_time_reads_relative_to_now_either_way() -> None:
    assert relative(NOW - timedelta(seconds=190), NOW) == "3m 10s ago"
    assert relative(NOW + timedelta(seconds=5), NOW) == "in 5.0s"
    assert relative(NOW - timedelta(seconds=190), NOW, cell=True) == "3m10s ago"
    assert relative(None) == ""


def test_a_stamp_is_utc_whatever_the_zone() -> None:
    assert stamp(NOW.astimezone(timezone(timedelta(hours=2)))) == "2026-05-01 12:00:00 UTC"
    assert stamp(None) == ""


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (3 << 20, "3.0 MiB"),
        (5 << 40, "5120.0 GiB"),
    ],
)
def test_a_size_is_in_binary_units(n: int, text: str) -> None:
    assert size(n) == text
