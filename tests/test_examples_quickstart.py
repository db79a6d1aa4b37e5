"""examples/quickstart.py (what `make demo` runs) works end to end and tells the truth.

The example runs as a user would run it: a subprocess of this Python, against the
test server given through AQUEUE_URL, or against its own embedded Valkey. Its summary
is checked against the fixed task mix it documents and, where the server outlives the
run, against what the server recorded.
"""

from __future__ import annotations

import os
import pty
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import cast

import redis

from aqueue._redis.keys import queue_keys
from aqueue.server import free_port

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"
QUEUES = ("demo:critical", "demo:default")

# The mix of 40 tasks (two rounds of the example's 20-task pattern).
TASKS = 40
PER_TYPE = {
    "email:send": 18,
    "image:resize": 10,
    "report:build": 6,
    "payment:charge": 4,  # fails twice, then succeeds: 2 retries each
    "webhook:deliver": 2,  # always fails, max_retry=1: 1 retry each, then archived
}
RETRIED = 4 * 2 + 2 * 1
ARCHIVED = 2
DELAYED = 4  # every 10th task


def run_example(*args: str, url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AQUEUE_URL"}
    if url is not None:
        env["AQUEUE_URL"] = url
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def summary(stdout: str) -> dict[str, float]:
    """The key/value lines of the printed summary, e.g. ``{"archived": 2.0, ...}``."""
    pattern = r"^  (processed|succeeded|retried|archived|delayed|elapsed|throughput)\s+([\d.]+)"
    return {key: float(value) for key, value in re.findall(pattern, stdout, re.MULTILINE)}


def per_type(stdout: str) -> dict[str, tuple[int, int, int, int]]:
    """The summary's per-type rows: tasks, succeeded, retried, archived."""
    rows = re.findall(r"^  (\S+:\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", stdout, re.MULTILINE)
    return {name: (int(a), int(b), int(c), int(d)) for name, a, b, c, d in rows}


def assert_summary_is_right(stdout: str) -> None:
    s = summary(stdout)
    assert s["succeeded"] == TASKS - ARCHIVED
    assert s["archived"] == ARCHIVED
    assert s["succeeded"] + s["archived"] == TASKS
    assert s["retried"] == RETRIED
    assert s["processed"] == TASKS + RETRIED
    assert s["delayed"] == DELAYED
    assert s["elapsed"] > 0
    assert s["throughput"] > 0
    # The worker's speed, not the demo's 1 s delay: measured on the tasks due at once.
    assert f"({TASKS - DELAYED} tasks due at once, first attempts in " in stdout
    # The final progress line is printed once, after the last periodic one.
    assert stdout.count(f"{TASKS}/{TASKS} done") == 1
    rows = per_type(stdout)
    assert {name: row[0] for name, row in rows.items()} == PER_TYPE
    assert rows["webhook:deliver"] == (2, 0, 2, 2)
    assert rows["payment:charge"] == (4, 4, 8, 0)
    # Delayed tasks really waited for process_in=1 before their first attempt.
    wait = re.search(r"shortest wait was ([\d.]+) s", stdout)
    assert wait is not None
    assert float(wait.group(1)) >= 1.0


def test_quickstart_on_given_server_reports_what_the_server_recorded(aqueue_url: str) -> None:
    result = run_example("--tasks", str(TASKS), url=aqueue_url)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # aqueue's per-failure warnings are kept out of the demo
    assert "\r" not in result.stdout  # not a terminal: plain progress lines
    assert_summary_is_right(result.stdout)

    r = redis.Redis.from_url(aqueue_url)
    try:
        keys = [queue_keys("aq", q) for q in QUEUES]
        # Nothing left to run, and exactly the doomed webhooks are archived.
        for k in keys:
            assert r.llen(k.pending) == 0
            assert r.zcard(k.scheduled) == 0
            assert r.zcard(k.retry) == 0
        default = queue_keys("aq", "demo:default")
        archived = cast(list[bytes], r.zrange(default.archived, 0, -1))
        assert len(archived) == ARCHIVED
        errors = cast(dict[bytes, bytes], r.hgetall(default.errors))
        assert set(errors) == set(archived)  # each archived task keeps its last error
        assert all(b"refused the connection" in error for error in errors.values())
        assert r.zcard(queue_keys("aq", "demo:critical").archived) == 0
        # The server's counters agree with the summary: every attempt processed once.
        processed = sum(int(r.hget(k.stats, "p") or 0) for k in keys)
        failed = sum(int(r.hget(k.stats, "f") or 0) for k in keys)
        assert processed == TASKS + RETRIED
        assert failed == RETRIED + ARCHIVED
    finally:
        r.close()


def test_quickstart_without_aqueue_url_runs_on_an_embedded_server_and_stops_it() -> None:
    result = run_example("--tasks", str(TASKS), url=None)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert_summary_is_right(result.stdout)
    started = re.search(r"embedded Valkey server at redis://127\.0\.0\.1:(\d+)/0", result.stdout)
    assert started is not None, result.stdout
    assert "stopped the embedded Valkey server" in result.stdout
    # The server is gone: nothing answers on its port any more.
    port = int(started.group(1))
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        pass
    else:
        raise AssertionError(f"the embedded server still listens on port {port}")


def test_quickstart_on_a_terminal_rewrites_one_line_that_fits_it(aqueue_url: str) -> None:
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "AQUEUE_URL"}
    env.update(AQUEUE_URL=aqueue_url, COLUMNS="60")
    argv = [sys.executable, str(EXAMPLE), "--tasks", str(TASKS)]
    with subprocess.Popen(argv, stdout=follower, stderr=subprocess.DEVNULL, env=env) as child:
        os.close(follower)
        out = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        os.close(leader)
        assert child.wait(60) == 0
    text = out.decode()
    progress = next(line for line in text.split("\n") if " done, " in line)
    frames = [f for f in progress.split("\r") if f.strip()]
    assert len(frames) >= 2, text
    # Each frame overwrites the last, and none is wider than the terminal (a line that
    # wraps cannot be rewritten in place: it would show twice).
    assert all(f.endswith("\x1b[K") and len(f) - len("\x1b[K") <= 59 for f in frames), frames
    assert text.count(f"{TASKS}/{TASKS} done") == 1


def test_quickstart_exits_1_when_tasks_do_not_finish_in_time(aqueue_url: str) -> None:
    # Delayed tasks cannot finish before 1 s, so a 0.5 s limit always runs out.
    result = run_example("--tasks", "20", "--timeout", "0.5", url=aqueue_url)

    assert result.returncode == 1
    assert "reached a final state within 0.5 s" in result.stderr
    assert "Summary" not in result.stdout


def test_quickstart_exits_1_with_a_clear_message_when_the_server_is_down() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # a free port: nothing listens there
    result = run_example("--tasks", "10", url=url)

    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr
