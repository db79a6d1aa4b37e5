"""Where docs/cli.md promises one line, the command prints one line, never a traceback.

Each case runs ``aqueue`` as a subprocess, the way an operator meets it: a database the
server does not have (exit 1), a handler module that fails at import (exit 2), a
dashboard port already taken (exit 1), a URL whose database is not a number (exit 2, for
every command that takes a URL, and ``InvalidOption`` from the Client, Worker and
Inspector), and a port number out of range (exit 2).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import aqueue
from aqueue import InvalidOption

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "aqueue._cli"]
MUX = "import aqueue\nmux = aqueue.Mux()\n"


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AQUEUE_URL"}
    env["PYTHONPATH"] = str(ROOT)  # `-m aqueue._cli` from any directory
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def one_error_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The single ``aqueue: error:`` line of a command that exited with ``code``."""
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr
    return errors[0]


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A project directory with a good module and two that fail at import."""
    (tmp_path / "good_tasks.py").write_text(MUX)
    (tmp_path / "raising_tasks.py").write_text(
        MUX + "\n\ndef connect() -> None:\n    raise RuntimeError('no DATABASE_URL set')\n\n\n"
        "connect()\n"
    )
    (tmp_path / "broken_tasks.py").write_text(MUX + "\ndef f(:\n    pass\n")
    return tmp_path


# -- a database the server does not have --------------------------------------------------


def test_stats_on_a_database_the_server_does_not_have_is_one_line_exit_1(
    aqueue_url: str,
) -> None:
    url = aqueue_url.rsplit("/", 1)[0] + "/99"
    line = one_error_line(run("stats", "--url", url), 1)
    assert line.startswith("aqueue: error: cannot use the server at redis://127.0.0.1:")
    assert "has no database 99" in line


def test_worker_on_a_database_the_server_does_not_have_is_one_line_exit_1(
    aqueue_url: str, app_dir: Path
) -> None:
    url = aqueue_url.rsplit("/", 1)[0] + "/99"
    line = one_error_line(run("worker", "good_tasks:mux", "--url", url, cwd=app_dir), 1)
    assert "has no database 99" in line


# -- a handler module that fails at import ------------------------------------------------


def test_a_module_that_raises_at_import_is_one_line_naming_it_and_the_error_exit_2(
    app_dir: Path,
) -> None:
    done = run("worker", "raising_tasks:mux", "--url", "redis://127.0.0.1:1/0", cwd=app_dir)
    line = one_error_line(done, 2)
    assert "cannot import module 'raising_tasks'" in line
    assert "RuntimeError: no DATABASE_URL set (raising_tasks.py, line 6)" in line


@pytest.mark.parametrize("command", ["worker", "dev"])
def test_a_module_with_a_syntax_error_is_one_line_naming_it_exit_2(
    app_dir: Path, command: str
) -> None:
    done = run(command, "broken_tasks:mux", cwd=app_dir)
    line = one_error_line(done, 2)
    assert "cannot import module 'broken_tasks'" in line
    assert "SyntaxError" in line
    assert "broken_tasks.py, line 4" in line


# -- the dashboard's port already taken ---------------------------------------------------


def test_dash_on_a_port_in_use_is_one_line_exit_1_and_prints_no_url() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run("dash", "--port", str(port), "--url", "redis://127.0.0.1:1/0")
    line = one_error_line(done, 1)
    assert line == (
        f"aqueue: error: cannot serve the dashboard on 127.0.0.1:{port}: the port is in use "
        "(choose another with --port)"
    )
    assert "http://" not in done.stdout  # the URL is printed only once it is served


# -- a URL whose database is not a number --------------------------------------------------

BAD_URLS = [
    pytest.param("redis://127.0.0.1:6379/abc", "'abc'", id="path"),
    pytest.param("redis://127.0.0.1:6379/abc?socket_keepalive=true", "'abc'", id="redis-py-only"),
    pytest.param("redis://127.0.0.1:6379/0?db=two", "'two'", id="query"),
    pytest.param("rediss://127.0.0.1:6379/1.5", "'1.5'", id="rediss"),
]


@pytest.mark.parametrize(("url", "named"), BAD_URLS)
@pytest.mark.parametrize(
    "command",
    [["stats"], ["queue", "ls"], ["worker", "good_tasks:mux"], ["metrics"], ["dash"]],
    ids=lambda c: " ".join(c),
)
def test_a_database_that_is_not_a_number_is_a_usage_error_naming_it(
    app_dir: Path, command: list[str], url: str, named: str
) -> None:
    line = one_error_line(run(*command, "--url", url, cwd=app_dir), 2)
    assert named in line
    assert "must be a number" in line


@pytest.mark.parametrize(("url", "named"), BAD_URLS)
def test_client_worker_and_inspector_refuse_a_database_that_is_not_a_number(
    url: str, named: str
) -> None:
    """Not silently database 0 (redis-py's reading of such a path)."""
    mux = aqueue.Mux()
    makers: list[Callable[[], object]] = [
        lambda: aqueue.Client(url),
        lambda: aqueue.Worker(mux, url),
        lambda: aqueue.Inspector(url),
    ]
    for make in makers:
        with pytest.raises(InvalidOption, match=f"database .* must be a number, got {named}"):
            make()


# -- port numbers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["metrics"], ["dash"], ["dev", "good_tasks:mux"]], ids=lambda c: c[0]
)
@pytest.mark.parametrize("port", ["80808", "65536", "0", "http"])
def test_a_port_out_of_range_is_a_usage_error_naming_it(
    app_dir: Path, command: list[str], port: str
) -> None:
    line = one_error_line(run(*command, "--port", port, cwd=app_dir), 2)
    assert f"'{port}'" in line
