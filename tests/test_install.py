"""The package installs the way its users install it.

The distribution is ``aqueue-redis`` (``aqueue`` on PyPI is an unrelated project); the
import package and the command stay ``aqueue``. Here a wheel is built from the checkout
and installed with its dependencies into a fresh venv, as ``pip install aqueue-redis``
would: ``import aqueue`` works from outside the checkout, and the ``aqueue`` command and
the pytest plugin are registered.

The dependencies come from pip's own configuration (its index, a local mirror, its
cache); set ``AQUEUE_TEST_WHEELHOUSE`` to a directory of wheels to install from that
alone (``--no-index``), offline. Marked ``slow`` (about 10 s here, mostly making the
venv): ``-m 'not slow'`` leaves it out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import aqueue

ROOT = Path(__file__).resolve().parents[1]
DIST = "aqueue-redis"
# Building and installing may fetch hatchling and the dependencies: generous, yet well
# within pytest's per-test timeout.
STEP_TIMEOUT = 100
# A child that must see neither this venv's nor the checkout's aqueue.
ENV = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
ENV["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"


def run(*argv: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=ENV, capture_output=True, text=True,
        timeout=STEP_TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, f"{argv}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_distribution_name_is_the_free_one_not_aqueue() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DIST
    assert project["scripts"] == {"aqueue": "aqueue._cli.main:main"}
    # The dev extra pulls the package's own extras by the distribution's name.
    assert any(dep.startswith(f"{DIST}[") for dep in project["optional-dependencies"]["dev"])


@pytest.mark.slow
def test_a_built_wheel_installs_in_a_fresh_venv_with_import_and_command(tmp_path: Path) -> None:
    house = os.environ.get("AQUEUE_TEST_WHEELHOUSE")
    offline = ["--no-index", "--find-links", house] if house else []  # hatchling too
    dist = tmp_path / "dist"
    pip = (sys.executable, "-m", "pip")
    run(*pip, "wheel", ROOT, "--no-deps", "-q", *offline, "-w", dist, cwd=tmp_path)
    (wheel,) = dist.glob("aqueue_redis-*.whl")

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", *offline, wheel, cwd=tmp_path)

    # -I: neither the current directory nor PYTHON* variables on the path.
    out = run(
        python, "-I", "-c",
        "import aqueue, importlib.metadata as m; print(aqueue.__file__); "
        f"print(m.version({DIST!r})); "
        "print(sorted(e.value for e in m.entry_points(group='pytest11') if e.name == 'aqueue'))",
        cwd=tmp_path,
    )  # fmt: skip
    where, version, plugin = out.splitlines()
    assert Path(where).is_relative_to(venv), where  # the installed copy, not the checkout
    assert version == aqueue.__version__
    assert plugin == "['aqueue.testing']"

    command = venv / "bin" / "aqueue"
    assert "usage: aqueue" in run(command, "--help", cwd=tmp_path)
    assert run(command, "--version", cwd=tmp_path).strip() == f"aqueue {aqueue.__version__}"
