"""The whole stack: a FastAPI app under uvicorn (one process, ``benchmarks/webapp.py``)
whose ``POST /signup`` enqueues one task, driven by ``wrk`` (Debian's ``wrk`` package),
against the same app with the enqueue removed: how much of a web app's capacity the
enqueue costs (target: >= 0.9x the requests per second of the app without it). The
peers' runner drives its apps with the same functions (``app_under_load``).

``wrk`` is a C load generator: a Python driver takes more of the CPU the app needs on
a small machine. Without ``wrk`` on the PATH a bounded Python driver (``py_drive``:
keep-alive connections, one request in flight on each) stands in, and the result's
baseline says so: its figures are lower, its ratio still fair (both apps get the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio

from .common import ROOT, Bench, Result, percentile

CONNECTIONS = 50
SECONDS = 5
BODY = '{"email": "ada@example.com", "plan": "pro"}'
_POST = f"""wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
"""
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


class WrkRun:
    """What one ``wrk --latency`` run printed: requests/s, p50 and p99 (ms), errors."""

    def __init__(self, out: str) -> None:
        rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if rate is None:
            raise RuntimeError(f"wrk printed no rate:\n{out}")
        self.rate = float(rate.group(1))
        requests = re.search(r"(\d+) requests in", out)
        self.requests = int(requests.group(1)) if requests else 0
        self.cpu_seconds = 0.0  # the app process's, over the run (``app_under_load``)
        self.p50 = _latency(out, "50%")
        self.p99 = _latency(out, "99%")
        errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
        socket_errors = re.search(r"Socket errors:.*", out)
        self.errors = int(errors.group(1)) if errors else 0
        if socket_errors is not None:
            self.errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(0)))


def _latency(out: str, label: str) -> float:
    found = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"wrk printed no {label} latency:\n{out}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The command line of an app process, given the port it is to listen on.
AppCommand = Callable[[int], list[str]]


def webapp_command(system: str, url: str) -> AppCommand:
    """``benchmarks.webapp`` for ``system`` (aqueue or none)."""
    return lambda port: [sys.executable, "-m", "benchmarks.webapp", str(port), url, system]


@contextlib.contextmanager
def serving(system: str, command: AppCommand) -> Iterator[tuple[int, int]]:
    """The app ``command`` starts, on a free port, until it answers: its port and pid."""
    port = _free_port()
    proc = subprocess.Popen(command(port), cwd=ROOT, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"the {system} web app did not start:\n{err}")
            time.sleep(0.05)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=20)


class DriverRun:
    """What ``py_drive`` measured: the same figures as ``WrkRun``."""

    def __init__(self, latencies_ms: list[float], seconds: float, errors: int) -> None:
        self.rate = len(latencies_ms) / seconds
        self.requests = len(latencies_ms)
        self.cpu_seconds = 0.0
        self.p50 = percentile(latencies_ms, 50) if latencies_ms else 0.0
        self.p99 = percentile(latencies_ms, 99) if latencies_ms else 0.0
        self.errors = errors


def py_drive(port: int, seconds: float) -> DriverRun:
    """``CONNECTIONS`` keep-alive HTTP/1.1 connections, one POST in flight on each,
    for ``seconds``: the latencies of the requests answered 202."""
    request = (
        f"POST /signup HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n{BODY}"
    ).encode()
    latencies: list[float] = []
    errors = 0

    async def one(end: float) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < end:
                start = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"content-length: (\d+)", head.lower())
                await reader.readexactly(int(length.group(1)) if length else 0)
                if not head.startswith(b"HTTP/1.1 202"):
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - start) * 1000)
        finally:
            writer.close()

    async def run() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(one(start + seconds) for _ in range(CONNECTIONS)))
        return time.perf_counter() - start

    elapsed = asyncio.run(run())
    return DriverRun(latencies, elapsed, errors)


def drive(port: int, seconds: int, script: Path) -> WrkRun | DriverRun:
    """One ``wrk`` run against ``port``: one thread (the app has one process); the
    Python driver when wrk is not installed."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return py_drive(port, seconds)
    command = [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script),
               f"http://127.0.0.1:{port}/signup"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr}")
    return WrkRun(done.stdout)


async def measure(system: str, url: str, seconds: int) -> WrkRun | DriverRun:
    """``benchmarks.webapp`` for ``system`` under load (``app_under_load``)."""
    return await app_under_load(system, webapp_command(system, url), seconds)


async def app_under_load(system: str, command: AppCommand, seconds: int) -> WrkRun | DriverRun:
    """The app ``command`` starts under load: a warm-up second, then the measured run."""

    def run() -> WrkRun | DriverRun:
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "post.lua"
            script.write_text(_POST)
            with serving(system, command) as (port, pid):
                drive(port, 1, script)  # connections open, code paths warm
                before = cpu_seconds(pid)
                result = drive(port, seconds, script)
                result.cpu_seconds = cpu_seconds(pid) - before
        if result.errors:
            raise RuntimeError(f"{result.errors} requests failed against the {system} app")
        return result

    return await anyio.to_thread.run_sync(run)


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) a process has used, from Linux's /proc; 0 elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()  # after the command's name
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def driver_name() -> str:
    """What drives the apps on this machine (it goes with the figures)."""
    return "wrk" if shutil.which("wrk") else "a Python driver (no wrk)"


async def web_signup(b: Bench) -> Result:
    seconds = max(1, round(SECONDS * b.scale))
    runs: dict[str, list[WrkRun | DriverRun]] = {"aqueue": [], "none": []}

    async def subject() -> float:
        runs["aqueue"].append(await measure("aqueue", b.url, seconds))
        return runs["aqueue"][-1].rate

    async def baseline() -> float:
        runs["none"].append(await measure("none", b.url, seconds))
        return runs["none"][-1].rate

    rate, base = await b.alternate(subject, baseline)
    median = sorted(runs["aqueue"], key=lambda r: r.rate)[len(runs["aqueue"]) // 2]
    ceiling = sorted(runs["none"], key=lambda r: r.rate)[len(runs["none"]) // 2]
    return Result(
        "web_signup", CONNECTIONS, "req/s", rate, base,
        f"the same app without the enqueue, {driver_name()}", "higher",
        extra={"p50_ms": median.p50, "p99_ms": median.p99,
               "ceiling_p50_ms": ceiling.p50, "ceiling_p99_ms": ceiling.p99},
    )  # fmt: skip
