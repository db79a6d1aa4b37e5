"""`aqueue cron ls` and `aqueue metrics`, run as real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

import aqueue
from aqueue import Context, Mux, Worker
from aqueue.server import free_port

from .helpers import wait_for

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]


def aqueue_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aqueue._cli", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


async def test_cron_ls_lists_each_schedule_once(url: str) -> None:
    mux = Mux()

    @mux.cron("*/5 * * * *", name="digest", tz="Europe/Paris", queue="mail")
    async def digest(ctx: Context) -> None: ...

    async with Worker(mux, url, queues=["mail"]), Worker(mux, url, queues=["mail"]):
        pass  # each registered the schedule at start
    done = await anyio.to_thread.run_sync(aqueue_cli, "cron", "ls", "--url", url, "--json")
    assert done.returncode == 0, done.stderr
    (entry,) = json.loads(done.stdout)
    assert (entry["name"], entry["spec"], entry["tz"], entry["queue"]) == (
        "digest",
        "*/5 * * * *",
        "Europe/Paris",
        "mail",
    )
    assert entry["next_run"] is not None
    table = await anyio.to_thread.run_sync(aqueue_cli, "cron", "ls", "--url", url)
    assert table.returncode == 0
    assert "digest" in table.stdout
    assert "*/5 * * * *" in table.stdout


async def test_metrics_command_serves_queue_gauges_until_sigterm(aqueue_url: str) -> None:
    async with aqueue.Client(aqueue_url) as client:
        await client.enqueue("t", queue="billing")
    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        [sys.executable, "-m", "aqueue._cli", "metrics", "--url", aqueue_url,
         "--port", str(port), "--interval", "0.2"],
        cwd=ROOT, env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        body = ""

        async def scraped() -> bool:
            nonlocal body
            try:
                async with httpx.AsyncClient() as http:
                    body = (await http.get(f"http://127.0.0.1:{port}/")).text
            except httpx.HTTPError:
                return False
            return 'queue="billing"' in body

        await wait_for(scraped, timeout=20, every=0.1)
        assert "aqueue_queue_tasks" in body
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out


def test_metrics_command_refuses_bad_values() -> None:
    done = aqueue_cli("metrics", "--port", "0")
    assert done.returncode == 2
    assert "'0'" in done.stderr
    done = aqueue_cli("metrics", "--queue", "no spaces")
    assert done.returncode == 2
    assert "'no spaces'" in done.stderr
