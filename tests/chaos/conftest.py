"""Keep a failing chaos test's report small: one failure reads as one failure.

Chaos tests run workers that log a great deal (an outage, a flapping connection, a
crash loop: tens of thousands of lines). A report carrying all of it is unreadable, and
pytest once died formatting one (``INTERNALERROR ... SystemError: AST constructor
recursion depth mismatch``). So, for the tests in this folder:

* what in-process code logs reaches the report's "Captured log" section capped per
  test phase: the first ``HEAD`` records, a line counting those left out, and the
  last ``TAIL`` (``caplog.records`` still holds every record for the test's asserts);
* worker subprocesses write their output to ``*.log`` files under the test's
  ``tmp_path``; when a test fails, its report gets the last ``LOG_TAIL`` lines of each,
  with the file's path for the rest.

Fixtures are not shared here on purpose: each test module imports its own (the
worker-crash tests from ``crash_fixtures``), so that the modules stay independent.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Generator
from pathlib import Path

import pytest

from ..helpers import tail

HEAD = 50
TAIL = 50
LOG_TAIL = 50


class _Cap(logging.Filter):
    """On pytest's report handler for one test phase: lets the first ``HEAD`` records
    through, holds the last ``TAIL`` of the others, counts the ones in between."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()  # workers' sync handlers log from threads
        self.passed = 0
        self.dropped = 0
        self.held: deque[logging.LogRecord] = deque(maxlen=TAIL)

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            if self.passed < HEAD:
                self.passed += 1
                return True
            if len(self.held) == TAIL:
                self.dropped += 1
            self.held.append(record)
            return False

    def release(self, handler: logging.Handler) -> None:
        """Once removed from ``handler``: hand it the count, then the held tail."""
        if self.dropped:
            handler.handle(
                logging.makeLogRecord({
                    "name": __name__,
                    "levelno": logging.WARNING,
                    "levelname": "WARNING",
                    "msg": f"[{self.dropped} log records left out of this report: the first "
                    f"{HEAD} and the last {TAIL} of this phase are shown]",
                })
            )  # fmt: skip
        for record in self.held:
            handler.handle(record)


def _capped(item: pytest.Item) -> Generator[None, None, None]:
    """Run one phase of ``item`` with its log report capped (see ``_Cap``). Runs inside
    the logging plugin's own wrapper (``trylast``): the cap is on before the first
    record and the tail is written before the plugin reads the report."""
    plugin = item.config.pluginmanager.get_plugin("logging-plugin")
    handler: logging.Handler | None = getattr(plugin, "report_handler", None)
    if handler is None:  # -p no:logging
        yield
        return
    cap = _Cap()
    handler.addFilter(cap)
    try:
        yield
    finally:
        handler.removeFilter(cap)
        cap.release(handler)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    yield from _capped(item)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    yield from _capped(item)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    yield from _capped(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed phase's report gets the tail of each log file under ``tmp_path``."""
    report = yield
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if report.failed and isinstance(tmp_path, Path):
        for log in sorted(tmp_path.rglob("*.log")):
            report.sections.append(_log_section(log))
    return report


def _log_section(log: Path) -> tuple[str, str]:
    text = log.read_text(errors="replace")
    n = len(text.splitlines())
    shown = f"last {min(n, LOG_TAIL)} of {n} lines" if n > LOG_TAIL else f"{n} lines"
    return f"{log.name} ({shown}; all of it: {log})", tail(text, LOG_TAIL)
