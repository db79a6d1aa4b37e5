"""Server outages in the worker's log: one line when the server is lost, one when it is
back, then at most one reminder per ``remind_every`` while it stays away or keeps
flapping (docs/operations.md, "Server outages in the log").

The policy is walked through minutes of outage on a clock the test moves (``Clock``);
the backoff and its "back" event on the real clock; and end to end, a real worker whose
connections a raw client keeps killing (``CLIENT KILL TYPE normal``) must log a bounded
number of lines that name the flapping, and then serve as before.
"""

from __future__ import annotations

import logging
import re
import ssl
import time

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis
import redis.exceptions as rexc

import aqueue
from aqueue._worker.boot import server_version, too_old
from aqueue._worker.outage import FIRST_BACKOFF, MAX_BACKOFF, Outage, waiting_helps
from aqueue.server import EmbeddedServer

from .helpers import wait_for

LOGGER = "aqueue.test.outage"
LOST = "lost the server"
BACK = "server reachable again"
FLAPPING = "connection to the server is flapping"
STILL = "server still unreachable"
STABLE = "connection to the server stable again"
DOWN = ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outage(clock: Clock) -> Outage:
    o = Outage(logging.getLogger(LOGGER), clock=clock)
    o.ok()  # the worker's first contact: the server answered
    return o


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def run(clock: Clock, outage: Outage, seconds: float, *, every: float, up: bool) -> None:
    """``seconds`` of calls, one per ``every`` s from now, all failing (``up=False``) or
    all ok; the clock ends ``seconds`` later."""
    for _ in range(round(seconds / every)):
        if up:
            outage.ok()
        else:
            outage.failure(DOWN)
        clock.now += every


def flap(clock: Clock, outage: Outage, seconds: float, period: float = 0.7) -> None:
    """Reconnect, then fail again, every ``period`` s (the pattern of issue 12)."""
    for _ in range(round(seconds / period)):
        clock.now += period / 2
        outage.ok()
        clock.now += period / 2
        outage.failure(DOWN)


def kinds(got: list[str]) -> list[str]:
    """Each line as the kind of news it carries."""
    news = (LOST, BACK, FLAPPING, STILL, STABLE, "waiting for the server")
    return [next((k for k in news if line.startswith(k)), line) for line in got]


# -- the policy, on a clock the test moves -------------------------------------------------


def test_an_outage_logs_one_line_when_lost_and_one_when_back_with_how_long(
    clock: Clock, outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    run(clock, outage, 20, every=0.1, up=False)
    clock.now += 0.5
    run(clock, outage, 60, every=0.01, up=True)
    assert lines(caplog) == [
        f"{LOST} ({DOWN}); retrying with backoff up to 5 s",
        f"{BACK} after 20.5 s",
    ]


def test_a_long_outage_is_reminded_every_30_s_with_the_failed_calls_since(
    clock: Clock, outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    run(clock, outage, 100, every=1.0, up=False)
    outage.ok()
    got = lines(caplog)
    assert got[0].startswith(LOST)
    assert got[1:4] == [
        f"{STILL} after {s} s (30 failed calls since the last report); last error: {DOWN}"
        for s in (30, 60, 90)
    ]
    assert got[4:] == [f"{BACK} after 100.0 s"]


def test_a_flapping_connection_is_reported_as_flapping_not_as_lost_and_back_pairs(
    clock: Clock, outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    outage.failure(DOWN)
    flap(clock, outage, 180)  # 3 minutes: the old policy logged ~500 lines
    got = lines(caplog)
    assert kinds(got[:2]) == [LOST, BACK]
    reminders = got[2:]
    assert 5 <= len(reminders) <= 6, got  # one per 30 s
    for line in reminders:
        match = re.fullmatch(
            rf"{FLAPPING}: (\d+) reconnects and (\d+) failed calls in the last (\d+) s; "
            rf"last error: {re.escape(str(DOWN))}",
            line,
        )
        assert match, line
        assert 40 <= int(match[1]) <= 45 and 40 <= int(match[2]) <= 45, line
        assert 30 <= int(match[3]) <= 31, line


def test_flapping_ends_with_one_line_once_the_connection_has_held(
    clock: Clock, outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    outage.failure(DOWN)
    flap(clock, outage, 45)
    run(clock, outage, 60, every=0.5, up=True)
    got = lines(caplog)
    assert len(got) == 4, got  # lost, back, flapping, stable
    assert got[2].startswith(FLAPPING)
    assert re.fullmatch(
        rf"{STABLE} \(\d+ reconnects and \d+ failed calls since the last report\)", got[3]
    ), got[3]
    # Quiet again: the next failure is a new outage, logged as such.
    outage.failure(DOWN)
    assert lines(caplog)[4].startswith(LOST)


def test_one_blip_after_recovery_is_told_once_the_connection_has_held(
    clock: Clock, outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    outage.failure(DOWN)
    clock.now += 2
    outage.ok()
    clock.now += 5
    outage.failure(DOWN)  # within 30 s of coming back: a flap, not a new outage
    clock.now += 0.2
    outage.ok()
    run(clock, outage, 40, every=1.0, up=True)
    assert lines(caplog)[2:] == [f"{STABLE} (1 reconnect and 1 failed call since the last report)"]


def test_a_failure_after_the_connection_held_is_a_new_outage(
    clock: Clock, outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for _ in range(3):
        outage.failure(DOWN)
        clock.now += 1
        outage.ok()
        clock.now += 31
    assert kinds(lines(caplog)) == [LOST, BACK] * 3


def test_a_flap_that_turns_into_a_long_outage_is_told_as_unreachable_then_back(
    clock: Clock, outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    outage.failure(DOWN)
    clock.now += 1
    outage.ok()  # back at 1001
    clock.now += 5
    run(clock, outage, 60, every=1.0, up=False)  # from 1006, a flap that lasts
    outage.ok()
    got = lines(caplog)
    assert (
        got[2] == f"{STILL} after 25 s (26 failed calls since the last report); last error: {DOWN}"
    )
    assert got[3].startswith(STILL)
    assert got[4:] == [f"{BACK} after 60.0 s"]


def test_a_worker_that_never_reached_its_server_says_it_is_waiting(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    outage = Outage(logging.getLogger(LOGGER), clock=clock)
    run(clock, outage, 45, every=0.5, up=False)
    outage.ok()
    assert lines(caplog) == [
        f"waiting for the server ({DOWN}); retrying with backoff up to 5 s",
        f"still waiting for the server after 30 s (60 failed calls since the last report); "
        f"last error: {DOWN}",
        "server reachable after waiting 45.0 s",
    ]


def test_thresholds_are_settable_for_a_short_test(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    outage = Outage(logging.getLogger(LOGGER), remind_every=2.0, flap_window=1.0, clock=clock)
    outage.ok()
    outage.failure(DOWN)
    flap(clock, outage, 6.1, period=0.2)
    run(clock, outage, 1.5, every=0.1, up=True)
    got = kinds(lines(caplog))
    assert got[:2] == [LOST, BACK] and got[-1] == STABLE, got
    assert got[2:-1] == [FLAPPING] * len(got[2:-1]) and 2 <= len(got[2:-1]) <= 3, got


# -- the backoff, on the real clock ------------------------------------------------------


def test_the_backoff_doubles_up_to_its_cap_and_starts_over_after_a_recovery(
    outage: Outage,
) -> None:
    delays = [outage.failure(DOWN) for _ in range(8)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, MAX_BACKOFF, MAX_BACKOFF]
    outage.ok()
    assert outage.failure(DOWN) == FIRST_BACKOFF


@pytest.mark.anyio
async def test_the_first_success_ends_every_waiter_s_backoff_at_once() -> None:
    outage = Outage(logging.getLogger(LOGGER), max_backoff=60.0)
    for _ in range(10):
        outage.failure(DOWN)  # the backoff is now at its (60 s) cap
    started: list[int] = []
    woken: list[float] = []

    async def waiter() -> None:
        # No checkpoint between the append and the wait: seen, it waits.
        started.append(1)
        await outage.failed(DOWN)
        woken.append(time.monotonic())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(waiter)
            await wait_for(lambda: len(started) == 3)
            assert woken == []
            back = time.monotonic()
            outage.ok()
    assert len(woken) == 3
    assert max(woken) - back < 1.0


@pytest.mark.anyio
async def test_sleep_overrides_the_backoff_for_callers_with_a_pace_of_their_own() -> None:
    outage = Outage(logging.getLogger(LOGGER), max_backoff=60.0)
    for _ in range(10):
        outage.failure(DOWN)
    with anyio.fail_after(5):
        await outage.failed(DOWN, sleep=0)
    assert outage.down


# -- which errors waiting can fix ----------------------------------------------------------


def _wrapped(cause: BaseException) -> aqueue.BrokerUnavailable:
    try:
        raise aqueue.BrokerUnavailable(f"cannot use the server at redis://x: {cause}") from cause
    except aqueue.BrokerUnavailable as exc:
        return exc


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ConnectionRefusedError(111, "Connection refused"), id="refused"),
        pytest.param(rexc.ConnectionError("Error -2 connecting to redis:6379."), id="dns"),
        pytest.param(rexc.TimeoutError("Timeout connecting to 10.0.0.1:6379"), id="timeout"),
        pytest.param(rexc.BusyLoadingError("Valkey is loading the dataset"), id="loading"),
        pytest.param(rexc.ResponseError("LOADING Redis is loading the dataset"), id="loading-raw"),
        pytest.param(rexc.ReadOnlyError("You can't write against a read only replica."), id="ro"),
        pytest.param(rexc.ResponseError("MASTERDOWN Link with MASTER is down"), id="masterdown"),
        pytest.param(rexc.ResponseError("CLUSTERDOWN Hash slot not served"), id="clusterdown"),
        pytest.param(rexc.OutOfMemoryError("command not allowed when used memory"), id="oom"),
        pytest.param(rexc.ResponseError("MISCONF unable to persist to disk"), id="misconf"),
        pytest.param(rexc.ResponseError("BUSY Redis is busy running a script"), id="busy"),
    ],
)
def test_waiting_helps_a_server_that_is_down_or_not_ready(error: Exception) -> None:
    assert waiting_helps(error)
    assert waiting_helps(_wrapped(error))


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(rexc.AuthenticationError("invalid username-password pair"), id="wrongpass"),
        pytest.param(rexc.AuthenticationError("Authentication required."), id="noauth"),
        pytest.param(rexc.ResponseError("NOAUTH Authentication required."), id="noauth-raw"),
        pytest.param(rexc.ResponseError("WRONGPASS invalid username-password"), id="raw"),
        pytest.param(rexc.NoPermissionError("this user has no permissions"), id="noperm"),
        pytest.param(rexc.InvalidResponse("Protocol error, got 'H' as reply type"), id="http"),
        pytest.param(
            rexc.ConnectionError("SELECT 99 failed: ERR DB index is out of range"), id="db"
        ),
        pytest.param(rexc.ResponseError("ERR unknown command 'BLMOVE'"), id="old-server"),
        pytest.param(ssl.SSLCertVerificationError("certificate verify failed"), id="tls"),
    ],
)
def test_waiting_cannot_help_refused_credentials_a_peer_that_is_not_redis_or_a_bad_server(
    error: Exception,
) -> None:
    assert not waiting_helps(error)
    assert not waiting_helps(_wrapped(error))


@pytest.mark.parametrize(
    ("info", "version", "old"),
    [
        ({"redis_version": "7.2.4", "valkey_version": "9.0.1"}, "7.2.4", False),
        ({"redis_version": "7.0.15"}, "7.0.15", False),
        ({"redis_version": "6.2.14"}, "6.2.14", True),
        ({"redis_version": "5.0.7"}, "5.0.7", True),
        ({"node-a:6379": {"redis_version": "7.2.4"}, "node-b:6379": {"redis_version": "6.2.1"}},
         "6.2.1", True),
        ({"server_name": "unknown"}, None, False),
        ({"redis_version": "unknown"}, None, False),
    ],
)  # fmt: skip
def test_a_server_older_than_redis_7_is_refused(
    info: dict[str, object], version: str | None, old: bool
) -> None:
    assert server_version(info) == version
    assert version is None or too_old(version) == old


# -- end to end: a real worker whose connections keep being killed -------------------------

FLAP_SECONDS = 8.0
KILL_EVERY = 0.25
REMIND = 2.0


class Tick(msgspec.Struct):
    n: int


mux = aqueue.Mux()
done: set[int] = set()


@mux.task("outage:tick")
async def tick(ctx: aqueue.Context, t: Tick) -> None:
    done.add(t.n)


async def kill_clients(url: str, seconds: float) -> int:
    """Kill every normal client connection (the worker's, not this one) every
    ``KILL_EVERY`` s for ``seconds``; return how many connections died."""
    killed = 0
    r = aioredis.Redis.from_url(url)
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            killed += int(await r.client_kill_filter(_type="normal", skipme=True))
            await anyio.sleep(KILL_EVERY)  # the pace of the fault, not a wait for an outcome
    finally:
        await r.aclose()
    return killed


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("aqueue") and r.levelno >= logging.WARNING
    ]


@pytest.mark.anyio
async def test_a_worker_whose_connections_keep_dying_logs_a_bounded_number_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aqueue")
    # A server of its own: killing every client of the shared one would hit others.
    with EmbeddedServer() as server, anyio.fail_after(60):
        # A short lease: the heartbeat (every lease_ttl / 3) reconnects between kills.
        worker = aqueue.Worker(mux, server.url, lease_ttl=1.5, timeout=1.0, concurrency=4)
        worker._outage = Outage(logging.getLogger("aqueue.worker"), remind_every=REMIND)
        async with worker:
            await wait_for(lambda: any("serving queues" in m for m in caplog.messages))
            caplog.clear()  # the start-up warnings (no persistence) are not the outage's
            killed = await kill_clients(server.url, FLAP_SECONDS)
            during = outage_lines(caplog)
            async with aqueue.Client(server.url) as client:
                await client.enqueue(tick, Tick(1))
            await wait_for(lambda: 1 in done, timeout=15)
            await wait_for(lambda: any(STABLE in m for m in outage_lines(caplog)), timeout=15)
    text = "\n".join(during)
    print(f"\n{killed} connections killed in {FLAP_SECONDS:g} s; the worker logged:\n{text}")
    assert killed >= 2 * FLAP_SECONDS, "the connections were not killed often enough to flap"
    assert text.count(LOST) == 1, text
    assert text.count(BACK) <= 1, text
    assert FLAPPING in text, text
    # lost, back, then at most one reminder per REMIND seconds.
    assert len(during) <= 2 + FLAP_SECONDS / REMIND + 1, text
