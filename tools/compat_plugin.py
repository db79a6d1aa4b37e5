"""pytest plugin for ``tools/compat.py`` (loaded with ``-p tools.compat_plugin``).

It does two things the compat legs need and plain pytest options do not give exactly:

- keeps only the embedded-Valkey variant of tests parametrized over server kinds (the
  ``url`` fixture of tests/conftest.py: ``valkey9``, ``redis7``, ``cluster``), so a leg
  costs one server kind; selecting by the fixture's parameter, not with ``-k``, cannot
  drop a test whose name merely contains "cluster";
- writes each test's outcome to the file named by ``$AQUEUE_COMPAT_REPORT`` (a
  ``started<TAB>epoch seconds<TAB>nodeid`` line as a test starts, then an
  ``outcome<TAB>duration<TAB>nodeid`` line per phase that ran), so the driver knows
  which node ids failed without the cache provider that pyproject disables, and which
  test pytest died in (a test started and never reported).
"""

from __future__ import annotations

import os
import time

import pytest

KIND = "valkey9"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        kind = callspec.params.get("url", KIND) if callspec is not None else KIND
        (keep if kind == KIND else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _record(outcome: str, duration: float, nodeid: str) -> None:
    path = os.environ.get("AQUEUE_COMPAT_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{outcome}\t{duration:.3f}\t{nodeid}\n")


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    _record("started", time.time(), nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed or report.when == "call":
        _record(report.outcome, report.duration, report.nodeid)
    elif report.skipped:  # skipped in setup: no call phase follows
        _record("skipped", report.duration, report.nodeid)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:  # a module that does not import: rerun it by its path
        _record("failed", 0.0, report.nodeid)
