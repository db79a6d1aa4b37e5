"""What the library logs: for operators, through `logging`, never printed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import aqueue
from aqueue import Context, Mux, Worker
from aqueue.server import EmbeddedServer
from aqueue.testing import drain

pytestmark = pytest.mark.anyio


def no_delay(retry_count: int, error: BaseException, task: aqueue.TaskInfo) -> float:
    return 0.0


async def test_each_failure_is_one_warning_line_with_id_type_queue_attempt_and_error(
    aqueue_url: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    mux = Mux()

    @mux.task("billing:charge", queue="billing", max_retry=1)
    async def charge(ctx: Context) -> None:
        raise ValueError("card declined")

    async with aqueue.Client(aqueue_url) as client:
        info = await client.enqueue(charge)
    with caplog.at_level(logging.DEBUG, logger="aqueue"):
        await drain(mux, aqueue_url, queues=["billing"], retry_delay=no_delay)
    failures = [r for r in caplog.records if r.levelno == logging.WARNING and info.id in r.message]
    assert [r.getMessage() for r in failures] == [
        f"task {info.id} (billing:charge) on billing failed, attempt 1 of 2, retry in 0 s: "
        "ValueError: card declined",
        f"task {info.id} (billing:charge) on billing failed, attempt 2 of 2, archived: "
        "ValueError: card declined",
    ]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert f"task {info.id} (billing:charge) on billing: active, attempt 1" in debug
    out, err = capsys.readouterr()
    assert out == ""  # the library prints nothing itself
    assert err == ""


async def test_boot_checks_warn_about_eviction_and_missing_persistence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    evicting = EmbeddedServer(extra=["--maxmemory-policy", "allkeys-lru"])
    with evicting as server, caplog.at_level(logging.WARNING, logger="aqueue"):
        async with Worker(Mux(), server.url):
            pass
    text = caplog.text
    assert "maxmemory-policy is 'allkeys-lru', not 'noeviction'" in text
    assert "keeps nothing on disk" in text
    caplog.clear()
    safe = ["--maxmemory-policy", "noeviction"]
    persistent = EmbeddedServer(appendonly=True, directory=tmp_path, extra=safe)
    with persistent as server, caplog.at_level(logging.WARNING, logger="aqueue"):
        async with Worker(Mux(), server.url):
            pass
    assert "maxmemory-policy" not in caplog.text
    assert "keeps nothing on disk" not in caplog.text
