"""Cron: validation at registration, exactly one enqueue per tick, catch-up, history."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime

import anyio
import pytest

import aqueue
from aqueue import Context, Mux, Worker
from aqueue._cron import CronSpec
from aqueue._reads import read_cron_entries
from aqueue._redis.broker import Broker

from .helpers import wait_for

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("spec", "tz", "bad"),
    [
        ("not a cron", "UTC", "'not a cron'"),
        ("* * * *", "UTC", "'* * * *'"),
        ("61 * * * *", "UTC", "'61 * * * *'"),
        ("* * * * * * *", "UTC", "'* * * * * * *'"),
        ("* * * * *", "Mars/Olympus", "'Mars/Olympus'"),
    ],
)
def test_invalid_cron_is_refused_at_registration(spec: str, tz: str, bad: str) -> None:
    mux = Mux()
    with pytest.raises(aqueue.InvalidCron, match=bad.replace("*", r"\*")):

        @mux.cron(spec, tz=tz)
        def job(ctx: Context) -> None: ...

    with pytest.raises(aqueue.InvalidCron):
        mux.cron_task(spec, "some:task", tz=tz)
    assert mux.names == []  # nothing half-registered


def test_cron_decorator_registers_a_task_named_after_the_function() -> None:
    mux = Mux()

    @mux.cron("*/5 * * * *", queue="reports")
    async def nightly(ctx: Context) -> None: ...

    assert nightly.name.startswith(f"{__name__}.test_cron_decorator_registers")
    assert nightly.name.endswith(".<locals>.nightly")
    assert nightly.options == {"queue": "reports"}
    (entry,) = mux.cron_entries
    assert entry.name == nightly.name
    with pytest.raises(aqueue.AqueueError, match="already registered"):
        mux.cron_task("* * * * *", "x", entry=nightly.name)


async def test_three_workers_enqueue_each_tick_exactly_once(url: str) -> None:
    mux = Mux()
    ticks: list[int] = []

    @mux.cron("* * * * * *", name="every-second")  # six fields: seconds last
    async def every_second(ctx: Context) -> None:
        assert ctx.enqueued_at is not None
        ticks.append(int(ctx.enqueued_at.timestamp()))

    started = time.time()
    async with Worker(mux, url), Worker(mux, url), Worker(mux, url):
        await wait_for(lambda: len(ticks) >= 4, timeout=10)
        await anyio.sleep(0.3)  # a late double-fire would land now
    per_second = Counter(ticks)
    assert set(per_second.values()) == {1}, per_second
    seconds = sorted(per_second)
    assert seconds == list(range(seconds[0], seconds[0] + len(seconds)))  # no tick skipped
    assert seconds[0] >= int(started)  # a new entry starts at its next tick
    broker = Broker(url)
    (entry,) = await read_cron_entries(broker)
    await broker.close()
    assert (entry.name, entry.spec, entry.task, entry.queue) == (
        "every-second",
        "* * * * * *",
        "every-second",
        "default",
    )
    assert entry.last_run is not None
    assert entry.next_run is not None
    assert entry.next_run > entry.last_run
    assert len(entry.history) >= len(ticks)
    assert entry.history[0].tick == entry.last_run  # newest first


@pytest.mark.parametrize(("policy", "expected"), [("latest", 1), ("all", 2), ("skip", 0)])
async def test_missed_ticks_after_all_workers_were_down(
    url: str, policy: str, expected: int
) -> None:
    mux = Mux()
    ran: list[str] = []

    @mux.cron("0 0 1 1 *", name="new-year", catch_up=policy)  # yearly: no live tick now
    async def new_year(ctx: Context) -> None:
        ran.append(ctx.task_id)

    # The last tick any scheduler enqueued was two new years ago.
    two_years_ago = datetime(datetime.now(UTC).year - 2, 1, 1, tzinfo=UTC)
    client = aqueue.Client(url)
    await client.broker.redis.hset(
        "aq:{default}:cron", "new-year", int(two_years_ago.timestamp() * 1000)
    )
    await client.close()
    async with Worker(mux, url), Worker(mux, url):  # two schedulers catch up together
        if expected:
            await wait_for(lambda: len(ran) >= expected, timeout=10)
        await anyio.sleep(0.5)
    assert len(ran) == expected


async def test_a_schedule_never_seen_before_does_not_catch_up(url: str) -> None:
    mux = Mux()
    ran: list[str] = []

    @mux.cron("0 0 1 1 *", name="fresh", catch_up="all")
    async def fresh(ctx: Context) -> None:
        ran.append(ctx.task_id)

    async with Worker(mux, url):
        await anyio.sleep(0.5)
    assert ran == []


async def test_cron_task_schedules_an_existing_task_with_a_payload(url: str) -> None:
    mux = Mux()
    got: list[dict[str, int]] = []

    @mux.task("report:build", queue="reports")
    async def build(ctx: Context, params: dict[str, int]) -> None:
        got.append(params)

    mux.cron_task("* * * * * *", build, {"size": 3})
    async with Worker(mux, url, queues=["reports"]):
        await wait_for(lambda: len(got) >= 1, timeout=5)
    assert got[0] == {"size": 3}


async def test_a_delayed_cron_task_starts_on_time_on_an_idle_worker(url: str) -> None:
    """A cron entry with ``process_in`` writes a scheduled task: the scheduler wakes every
    worker's forwarder for it, as ``Client.enqueue`` does, so it starts at its due time
    and not when an idle forwarder next looks (up to ``FORWARD_MAX_SLEEP`` later)."""
    mux = Mux()
    late: list[float] = []

    @mux.cron("* * * * * *", name="delayed", process_in=1)
    async def delayed(ctx: Context) -> None:
        assert ctx.enqueued_at is not None
        due = ctx.enqueued_at.timestamp() + 1  # the task's scheduled time
        late.append(time.time() - due)

    async with Worker(mux, url):  # its forwarder found nothing due: it sleeps its longest
        await wait_for(lambda: len(late) >= 3, timeout=10)
    assert all(-0.01 < s < 0.5 for s in late[:3]), late  # well under the forwarder's sleep


async def test_no_scheduler_means_no_ticks(url: str) -> None:
    mux = Mux()
    ran: list[str] = []

    @mux.cron("* * * * * *", name="quiet")
    async def quiet(ctx: Context) -> None:
        ran.append(ctx.task_id)

    async with Worker(mux, url, scheduler=False):
        await anyio.sleep(1.5)
    assert ran == []


# Daylight saving in Europe/Berlin: on 2025-03-30 the clocks go from 02:00 to 03:00.
# croniter before 6.1 got both of these wrong (an hour early; one tick twenty times),
# which is why pyproject asks for croniter>=6.1 (checked by `make test-compat`).
SPRING_FORWARD = int(datetime(2025, 3, 30, 0, 30, tzinfo=UTC).timestamp() * 1000)


def test_next_tick_across_a_daylight_saving_change_is_exact() -> None:
    spec = CronSpec("m", "0 0 1 * *", "t", None, {}, tz="Europe/Berlin")
    # 2025-04-01 00:00 in Berlin (CEST, UTC+2) is 2025-03-31 22:00 UTC.
    assert spec.next_after(SPRING_FORWARD) == 1743458400000


def test_a_time_skipped_by_daylight_saving_ticks_once() -> None:
    spec = CronSpec("d", "30 2 * * *", "t", None, {}, tz="Europe/Berlin")
    hours = 6 * 3600 * 1000
    ticks = spec.ticks_between(SPRING_FORWARD - hours, SPRING_FORWARD + hours, 100)
    assert ticks == [1743296400000]
