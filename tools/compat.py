"""``make test-compat``: the contract tests at both ends of the supported dependency range.

Each leg runs the contract tests (``CONTRACT_TESTS``, embedded Valkey only) in its own
venv under ``.compat-venvs/``, rebuilt when pyproject.toml, the leg's constraints or this
file change:

- ``lowest``: the core dependencies (``CORE``) at the floors pinned in
  constraints/lowest.txt, which must match pyproject's ``>=``; everything else at the
  lock's version (constraints/dev.txt), so only the core differs from ``make test``;
- ``newest``: whatever pip resolves today, no constraints (rebuilt at least daily).

Each leg ends with one verdict line. When a leg fails, the line names the package(s)
whose version alone makes the difference. The failed tests (the quickest few) are rerun
in ``.compat-venvs/bisect``, first at the lock's versions (if they fail there too, no
version is to blame), then once per package that differs from the lock: the lock's
versions except that one package at the leg's version. Reruns are repeated so that a
flaky test is not blamed on a version, and ``$COMPAT_BISECT_SECONDS`` bounds the search.

Usage: ``python tools/compat.py [lowest] [newest]`` (both when none is given). Exits 1
if any leg failed, after running every leg.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "constraints" / "dev.txt"
LOWEST = ROOT / "constraints" / "lowest.txt"
VENVS = ROOT / ".compat-venvs"

# The dependencies whose supported range pyproject declares (floors in lowest.txt).
CORE = ("redis", "hiredis", "anyio", "croniter", "msgspec")
# A file that does not exist (yet) is skipped with a note.
CONTRACT_TESTS = (
    "tests/test_client.py",
    "tests/test_worker.py",
    "tests/chaos/test_server_chaos.py",
    "tests/test_wire_faults.py",
    "tests/test_wire_pack.py",  # hiredis.pack_command's bytes, on every hiredis
    "tests/test_cron.py",  # the only tests that drive croniter
)
# What the contract tests need besides aqueue's own dependencies (uvloop: the wire tests
# run on both event loops). Every venv here is rebuilt when this file changes.
INSTALL = ("-e", ".[embedded,fast]", "pytest", "pytest-timeout")
SELF = Path(__file__).resolve()
PYTEST = ("-m", "pytest", "-p", "tools.compat_plugin")
# The newest leg follows new releases even when nothing here changes.
NEWEST_MAX_AGE = 24 * 3600.0
# The whole search for a failed leg's culprit, and the failed tests rerun at each step
# (the quickest first, at most RERUN_MAX of them and about RERUN_SECONDS of run time).
BISECT_SECONDS = float(os.environ.get("COMPAT_BISECT_SECONDS", "300"))
RERUN_SECONDS = 60.0
RERUN_MAX = 4
# Flaky tests are not blamed on a version (see ``blame``).
LOCK_RUNS = 2
CONFIRM_RUNS = 3
# A rerun's per-test timeout: a hang costs this, not pyproject's 120 s, at each step.
RERUN_TIMEOUT = 60
# How many times a run that died in a hung test goes on with the tests after it.
RESUMES = 3
# Never candidates for blame: the installer's own packages.
TOOLING = frozenset({"pip", "setuptools", "wheel"})

ENV = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
ENV["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"


def say(text: str) -> None:
    print(text, flush=True)


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def release(version: str) -> tuple[int, ...]:
    """``"5.2"`` and ``"5.2.0"`` alike: the release numbers without trailing zeros."""
    match = re.match(r"\d+(\.\d+)*", version)
    parts = [int(p) for p in match[0].split(".")] if match else []
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def read_pins(path: Path) -> dict[str, str]:
    """``NAME==VERSION`` lines (comments and blank lines skipped), by canonical name."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise SystemExit(f"{path.relative_to(ROOT)}: expected NAME==VERSION, got {line!r}")
        pins[canon(name.split("[", 1)[0])] = version.strip()
    return pins


def floor_problems(pins: Mapping[str, str]) -> list[str]:
    """Where constraints/lowest.txt and pyproject's ``>=`` floors disagree."""
    problems = [f"{name} is not pinned" for name in CORE if name not in pins]
    for dep in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]:
        match = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+)", dep)
        if match is None:
            problems.append(f"pyproject dependency {dep!r} has no >= floor")
            continue
        name, floor = canon(match[1]), match[2]
        if name in pins and release(pins[name]) != release(floor):
            problems.append(f"{name}=={pins[name]} but pyproject says >={floor}")
    return problems


def pins_text(versions: Mapping[str, str], names: Iterable[str]) -> str:
    return " ".join(f"{n}=={versions.get(n, '(missing)')}" for n in names)


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


@dataclass(frozen=True)
class Venv:
    path: Path

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    @property
    def stamp(self) -> Path:
        return self.path / ".compat-stamp"

    def fresh(self, inputs: Sequence[Path], max_age: float | None = None) -> bool:
        """Made after every input changed (and, given ``max_age``, recently enough)."""
        if not self.stamp.exists():
            return False
        made = self.stamp.stat().st_mtime
        if any(p.stat().st_mtime > made for p in inputs):
            return False
        return max_age is None or time.time() - made < max_age

    def create(self) -> None:
        say(f"-- making {self.path.relative_to(ROOT)}")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(self.path)], check=True)

    def pip_install(self, *args: str) -> None:
        cmd = [self.python, "-m", "pip", "install", "-q", *args]
        subprocess.run(cmd, cwd=ROOT, env=ENV, check=True)

    def versions(self) -> dict[str, str]:
        """Every installed distribution but the editable aqueue, by canonical name."""
        cmd = [self.python, "-m", "pip", "list", "--format=json", "--exclude-editable"]
        out = subprocess.run(cmd, env=ENV, check=True, capture_output=True, text=True).stdout
        return {canon(d["name"]): d["version"] for d in json.loads(out)}


@dataclass
class Run:
    """A pytest run: its exit status, each node id's outcome and duration, and the tests
    that never finished (pytest died in them)."""

    returncode: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)  # "passed", "failed", "skipped"
    durations: dict[str, float] = field(default_factory=dict)
    hung: list[str] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(o == outcome for o in self.outcomes.values())

    @property
    def failed(self) -> list[str]:
        return [n for n, o in self.outcomes.items() if o == "failed"]

    def add(self, lines: Iterable[str], now: float) -> str | None:
        """Fold in one pass's report lines; the test it died in, if it died."""
        started: dict[str, float] = {}
        for line in lines:
            outcome, value, nodeid = line.split("\t", 2)
            if outcome == "started":
                started[nodeid] = float(value)
                continue
            if self.outcomes.get(nodeid) != "failed":  # a failed teardown after a pass fails
                self.outcomes[nodeid] = outcome
            self.durations[nodeid] = self.durations.get(nodeid, 0.0) + float(value)
        died = [n for n in started if n not in self.outcomes]
        for nodeid in died:
            self.outcomes[nodeid] = "failed"
            self.durations[nodeid] = now - started[nodeid]
            self.hung.append(nodeid)
        return died[0] if died else None


def run_pytest(venv: Venv, targets: Sequence[str], *, rerun: bool = False) -> Run:
    """Run ``targets``. pyproject's timeout ends the whole process when a test hangs (its
    thread method), so the tests after a hung one are run again, up to RESUMES times."""
    options = (
        ("-q", "--tb=no", "-rf", f"--timeout={RERUN_TIMEOUT}") if rerun else ("--tb=short", "-rfE")
    )
    run = Run()
    for attempt in range(1 + RESUMES):
        done = [arg for nodeid in run.outcomes for arg in ("--deselect", nodeid)]
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report.tsv"
            proc = subprocess.run(
                [venv.python, *PYTEST, *options, *done, *targets],
                cwd=ROOT,
                env={**ENV, "AQUEUE_COMPAT_REPORT": str(report)},
            )
            lines = report.read_text().splitlines() if report.exists() else []
        if attempt == 0:
            run.returncode = proc.returncode
        died = run.add(lines, time.time())
        if died is None or proc.returncode == 0:
            break
        say(f"-- pytest died in {died} (a timeout?); running the tests after it")
    return run


# -- the legs' venvs -------------------------------------------------------------------


def make_lowest(venv: Venv) -> None:
    """Core at the floors, everything else at the lock's version."""
    lowest = read_pins(LOWEST)
    lock = read_pins(LOCK)
    pins = {**{n: v for n, v in lock.items() if n not in lowest}, **lowest}
    constraints = VENVS / "lowest-constraints.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
    if not venv.fresh((PYPROJECT, LOWEST, LOCK, SELF)):
        venv.create()
        venv.pip_install(*INSTALL, "-c", str(constraints))
        venv.stamp.touch()


def make_newest(venv: Venv) -> None:
    if not venv.fresh((PYPROJECT, SELF), NEWEST_MAX_AGE):
        venv.create()
        venv.pip_install("--upgrade", "--upgrade-strategy", "eager", *INSTALL)
        venv.stamp.touch()


LEGS: dict[str, Callable[[Venv], None]] = {"lowest": make_lowest, "newest": make_newest}


def lock_venv(lock: Mapping[str, str]) -> Venv:
    """``.compat-venvs/bisect`` at the lock's versions (undoing any earlier bisect step)."""
    venv = Venv(VENVS / "bisect")
    if not venv.fresh((PYPROJECT, LOCK, SELF)):
        venv.create()
        venv.pip_install(*INSTALL, "-c", str(LOCK))
        venv.stamp.touch()
    off = {n: lock[n] for n, v in venv.versions().items() if n in lock and v != lock[n]}
    if off:
        venv.pip_install(*(f"{n}=={v}" for n, v in off.items()))
    return venv


# -- finding the culprit ---------------------------------------------------------------


def quickest(run: Run) -> list[str]:
    """The failed node ids to rerun: the quickest, within RERUN_MAX and RERUN_SECONDS."""
    chosen: list[str] = []
    total = 0.0
    for nodeid in sorted(run.failed, key=lambda n: run.durations.get(n, 0.0)):
        total += run.durations.get(nodeid, 0.0)
        if chosen and (len(chosen) == RERUN_MAX or total > RERUN_SECONDS):
            break
        chosen.append(nodeid)
    return chosen


def fails_ever(venv: Venv, tests: Sequence[str], runs: int) -> set[str]:
    """The tests that fail in any of ``runs`` runs."""
    failed: set[str] = set()
    for _ in range(runs):
        left = [t for t in tests if t not in failed]
        if not left:
            break
        failed |= set(run_pytest(venv, left, rerun=True).failed) & set(left)
    return failed


def fails_always(venv: Venv, tests: Sequence[str], runs: int) -> set[str]:
    """The tests that fail in each of ``runs`` runs (those that pass are not run again)."""
    left = list(tests)
    for _ in range(runs):
        if not left:
            break
        failed = set(run_pytest(venv, left, rerun=True).failed)
        left = [t for t in left if t in failed]
    return set(left)


def blame(leg: Mapping[str, str], lock: Mapping[str, str], run: Run) -> str:
    """The verdict of a failed leg: the package(s) whose leg version alone fails a test.

    A flaky test must not be blamed on a version: a test fails "with the lock's
    versions" if it fails in any of LOCK_RUNS runs there, and "with a package" only if
    it fails CONFIRM_RUNS times in a row with it and then passes with the lock's again.
    """
    deadline = time.monotonic() + BISECT_SECONDS
    differ = [n for n in leg if n in lock and leg[n] != lock[n] and n not in TOOLING]
    differ.sort(key=lambda n: (n not in CORE, n))
    picked = quickest(run)
    notes = []
    if len(picked) < len(run.failed):
        notes.append(f"judged on the {len(picked)} quickest failed tests")
    venv = lock_venv(lock)
    say(f"-- bisect: {len(picked)} failed test(s) with the lock's versions")
    at_lock = fails_ever(venv, picked, LOCK_RUNS)
    suspects = [n for n in picked if n not in at_lock]
    if not suspects:
        return "; ".join(["FAILED with the lock's versions too: not a dependency version", *notes])
    if at_lock:
        notes.append(f"{len(at_lock)} of them fail with the lock's versions too")
    found, tried = one_at_a_time(venv, differ, leg, lock, suspects, deadline)
    if tried < len(differ):
        notes.append(f"bisect stopped after {tried} of {len(differ)} packages (time)")
    blamed = set().union(*found.values())
    flaky = fails_ever(venv, sorted(blamed), LOCK_RUNS) if blamed else set()
    culprits = [f"{n}=={leg[n]} (lock has {lock[n]})" for n, t in found.items() if t - flaky]
    unexplained = len(set(suspects) - (blamed - flaky))
    if culprits:
        cause = f"FAILED with {' and '.join(culprits)}"
        if unexplained:
            notes.append(f"{unexplained} other(s) pass with each package alone: flaky?")
    elif differ:
        others = ", ".join(f"{n}=={leg[n]} (lock has {lock[n]})" for n in differ)
        cause = (
            f"FAILED, but no single package fails a test alone (flaky? a combination?): {others}"
        )
    else:
        cause = (
            "FAILED, yet every package is at the lock's version and the tests pass there: flaky?"
        )
    return "; ".join([cause, *notes])


def one_at_a_time(
    venv: Venv,
    names: Sequence[str],
    leg: Mapping[str, str],
    lock: Mapping[str, str],
    tests: Sequence[str],
    deadline: float,
) -> tuple[dict[str, set[str]], int]:
    """For each package in turn, the lock's versions but that one at the leg's version:
    the tests each package fails, and how many packages were tried before ``deadline``.
    The venv is back at the lock's versions at the end."""
    found: dict[str, set[str]] = {}
    tried = 0
    for name in names:
        if time.monotonic() > deadline:
            break
        tried += 1
        before = venv.versions()
        say(f"-- bisect: the lock's versions but {name}=={leg[name]}")
        try:
            venv.pip_install(f"{name}=={leg[name]}")
        except subprocess.CalledProcessError:
            say(f"-- bisect: {name}=={leg[name]} does not install over the lock; skipped")
            continue
        after = venv.versions()
        if failed := fails_always(venv, tests, CONFIRM_RUNS):
            found[name] = failed
        back = [f"{n}=={lock[n]}" for n, v in after.items() if before.get(n) != v and n in lock]
        if back:
            venv.pip_install(*back)
    return found, tried


# -- a leg -----------------------------------------------------------------------------


def run_leg(name: str) -> tuple[bool, str]:
    """Run one leg; whether it passed, and its verdict line."""
    started = time.monotonic()
    say(f"== compat {name}")
    targets = [t for t in CONTRACT_TESTS if (ROOT / t).exists()]
    for missing in sorted(set(CONTRACT_TESTS) - set(targets)):
        say(f"-- {missing} does not exist: skipped")
    if name == "lowest" and (problems := floor_problems(read_pins(LOWEST))):
        return False, f"compat {name}: FAILED: constraints/lowest.txt: {'; '.join(problems)}"
    venv = Venv(VENVS / name)
    try:
        LEGS[name](venv)
    except subprocess.CalledProcessError as exc:
        return False, f"compat {name}: FAILED to install its venv (exit {exc.returncode})"
    leg = venv.versions()
    lock = read_pins(LOCK)
    if name == "lowest" and (
        off := {n: v for n, v in read_pins(LOWEST).items() if leg.get(n) != v}
    ):
        return False, f"compat {name}: FAILED: the venv does not have {pins_text(off, off)}"
    say(f"-- {name}: {pins_text(leg, CORE)} (venv ready in {minutes(time.monotonic() - started)})")
    ok, verdict = judge(run_pytest(venv, targets), leg, lock)
    return ok, f"compat {name}: {verdict} [{minutes(time.monotonic() - started)}]"


def judge(run: Run, leg: Mapping[str, str], lock: Mapping[str, str]) -> tuple[bool, str]:
    if run.returncode == 0:
        return True, f"ok, {run.count('passed')} passed with {pins_text(leg, CORE)}"
    if run.returncode == 5:
        return False, (
            "FAILED: no test ran (pytest exit 5), so the selection is wrong "
            "(CONTRACT_TESTS in tools/compat.py, or tools/compat_plugin.py's filter)"
        )
    if not run.failed:
        return False, (
            f"FAILED: pytest exited {run.returncode} without a failed test "
            "(an import, usage or internal error: see its output above)"
        )
    counts = f"{len(run.failed)} of {len(run.outcomes)} tests failed"
    if run.hung:
        counts += f", {len(run.hung)} of them hung"
    try:
        verdict = blame(leg, lock, run)
    except subprocess.CalledProcessError as exc:  # pip, while making the bisect venv
        verdict = (
            f"FAILED; no culprit named: the bisect venv did not install (exit {exc.returncode})"
        )
    return False, f"{verdict} ({counts})"


def main(argv: Sequence[str]) -> int:
    names = list(argv) or list(LEGS)
    unknown = [n for n in names if n not in LEGS]
    if unknown:
        say(f"unknown leg(s) {unknown}: choose from {list(LEGS)}")
        return 2
    VENVS.mkdir(exist_ok=True)
    results: list[tuple[bool, str]] = []
    for name in names:
        results.append(run_leg(name))
        say(results[-1][1])
    if len(results) > 1:
        say("== compat summary")
        for _, line in results:
            say(line)
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
