"""Every cron spec in the docs means what its comment says.

croniter's optional sixth field is the seconds, last: ``* * * * * */10`` is every 10 s,
while ``*/10 * * * * *`` (seconds first, as some other cron dialects write it) is every
second of every tenth minute. The docs once said the latter and meant the former. So each
``mux.cron(...)`` / ``mux.cron_task(...)`` line in a code block of the README or of
``docs/*.md`` must be listed in ``MEANING`` below with its comment (when it has one: the
examples that teach the syntax say when they run) and its next ticks from a fixed start,
as worked out by hand from what the docs say. The test computes the ticks with aqueue's
own scheduler arithmetic (``CronSpec.next_after``, croniter underneath) and compares.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import pytest

from aqueue._cron import CronSpec

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A Monday, 10 s before 9:00 UTC (10:00 in Paris, winter time).
START = datetime(2026, 1, 5, 8, 59, 50, tzinfo=UTC)

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_CRON = re.compile(r"\bcron(?:_task)?\(\s*\"(?P<spec>[^\"]+)\"(?P<rest>.*)$")
_TZ = re.compile(r"\btz=\"(?P<tz>[^\"]+)\"")


class Example(NamedTuple):
    page: str
    spec: str
    tz: str
    comment: str


class Meaning(NamedTuple):
    comment: str  # the docs' comment on the line, "" for none
    ticks: list[datetime]  # the first ticks after START, UTC


def _utc(year: int, month: int, day: int, hour: int, minute: int, second: int) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# (spec, tz) -> what the docs' comment says, and the ticks that means after START.
MEANING: dict[tuple[str, str], Meaning] = {
    ("0 3 * * *", "Europe/Paris"): Meaning(
        "every day at 3:00, Paris time",  # 3:00 CET is 2:00 UTC in January
        [_utc(2026, 1, 6, 2, 0, 0), _utc(2026, 1, 7, 2, 0, 0), _utc(2026, 1, 8, 2, 0, 0)],
    ),
    ("* * * * * */10", "UTC"): Meaning(
        "every 10 s",
        [_utc(2026, 1, 5, 9, 0, 0), _utc(2026, 1, 5, 9, 0, 10), _utc(2026, 1, 5, 9, 0, 20)],
    ),
    ("*/15 * * * *", "UTC"): Meaning(
        "every 15 minutes",
        [_utc(2026, 1, 5, 9, 0, 0), _utc(2026, 1, 5, 9, 15, 0), _utc(2026, 1, 5, 9, 30, 0)],
    ),
    ("0 9 * * mon", "UTC"): Meaning(
        "every Monday at 9:00",
        [_utc(2026, 1, 5, 9, 0, 0), _utc(2026, 1, 12, 9, 0, 0), _utc(2026, 1, 19, 9, 0, 0)],
    ),
    ("30 17 1 * *", "UTC"): Meaning(
        "at 17:30 on the 1st of each month",
        [_utc(2026, 2, 1, 17, 30, 0), _utc(2026, 3, 1, 17, 30, 0), _utc(2026, 4, 1, 17, 30, 0)],
    ),
    # workflows.md: a nightly job, "etl:nightly".
    ("0 2 * * *", "UTC"): Meaning(
        "",
        [_utc(2026, 1, 6, 2, 0, 0), _utc(2026, 1, 7, 2, 0, 0), _utc(2026, 1, 8, 2, 0, 0)],
    ),
}


def doc_examples() -> list[Example]:
    """Each cron call in a fenced code block of the README or docs, with its comment."""
    found = []
    for path in PAGES:
        for block in _FENCE.finditer(path.read_text()):
            for line in block.group(1).splitlines():
                match = _CRON.search(line)
                if match is None:
                    continue
                rest = match["rest"]
                tz = _TZ.search(rest)
                _, _, comment = rest.partition("#")
                found.append(
                    Example(path.name, match["spec"], tz["tz"] if tz else "UTC", comment.strip())
                )
    return found


EXAMPLES = doc_examples()


def next_ticks(spec: str, tz: str, count: int) -> list[datetime]:
    entry = CronSpec("docs", spec, "docs:task", None, {}, tz=tz)
    ticks, ms = [], int(START.timestamp() * 1000)
    for _ in range(count):
        ms = entry.next_after(ms)
        ticks.append(datetime.fromtimestamp(ms / 1000, tz=UTC))
    return ticks


def test_the_docs_have_cron_examples_to_check() -> None:
    taught = [e for e in EXAMPLES if e.page == "scheduling.md"]
    assert len(taught) >= 4, EXAMPLES
    assert all(e.comment for e in taught), "scheduling.md's examples say when they run"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: f"{e.page}:{e.spec}")
def test_cron_example_ticks_when_its_comment_says(example: Example) -> None:
    meaning = MEANING.get((example.spec, example.tz))
    assert meaning is not None, (
        f"{example.page}: cron spec {example.spec!r} (tz {example.tz}) is not in MEANING: "
        "add its comment and its next ticks from START, worked out by hand"
    )
    assert example.comment == meaning.comment, (
        f"{example.page}: the comment of {example.spec!r} says {example.comment!r}, "
        f"MEANING says {meaning.comment!r}"
    )
    assert next_ticks(example.spec, example.tz, len(meaning.ticks)) == meaning.ticks


def test_seconds_first_is_not_every_ten_seconds() -> None:
    """The mistake the docs once made: with the seconds field last, ``*/10 * * * * *``
    runs every second of minutes 0, 10, 20, ..."""
    ticks = next_ticks("*/10 * * * * *", "UTC", 3)
    assert ticks == [
        _utc(2026, 1, 5, 9, 0, 0),
        _utc(2026, 1, 5, 9, 0, 1),
        _utc(2026, 1, 5, 9, 0, 2),
    ]


def test_every_spec_in_meaning_is_still_in_the_docs() -> None:
    """A spec dropped from the docs leaves MEANING too, so the table stays the docs'."""
    assert {(e.spec, e.tz) for e in EXAMPLES} == set(MEANING)
