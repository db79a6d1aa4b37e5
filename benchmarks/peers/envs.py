"""The peers' virtual environments: ``.bench-venvs/<peer>/``, one per peer, never .venv.

aqueue gets one too, ``.bench-venvs/aqueue/``, with the project installed (editable)
and its core dependencies only: the project's .venv also holds the dev tools and the
optional extras (OpenTelemetry, which redis-py imports when present, Prometheus, the
dashboard), which would make aqueue's worker heavier than a user's.

Each is created on first use with the runner's Python and the peer installed from
PyPI at its latest release (the report records the versions). A stamp file holds the
requirements it was installed with, so later runs start without touching the network;
``--upgrade`` (``ensure(upgrade=True)``) moves every peer to its latest release.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..common import ROOT

VENVS = ROOT / ".bench-venvs"

# What pip installs in each peer's environment. Versions float to the latest release.
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    # arq depends on redis[hiredis] itself.
    "arq": ("arq",),
    # Chosen: the "redis" extra is SAQ's documented install for a Redis queue, and
    # "hiredis" the C reply parser aqueue has too (it depends on redis[hiredis]). saq
    # 0.26 imports typing_extensions without declaring it, hence the explicit line.
    "saq": ("saq[redis,hiredis]", "typing_extensions"),
    # streaq talks to Redis through coredis, its own dependency.
    "streaq": ("streaq",),
    # Chosen: hiredis, which redis-py uses by itself when present, as aqueue has it.
    "taskiq": ("taskiq", "taskiq-redis", "hiredis"),
}
PEERS = tuple(REQUIREMENTS)
# aqueue itself, from this checkout (editable: the code measured is the code here).
# Spelled --editable since the distribution became aqueue-redis: a changed stamp makes an
# environment installed as "aqueue" before install it again under its new name.
OWN: dict[str, tuple[str, ...]] = {"aqueue": ("--editable", str(ROOT))}


def requirements(name: str) -> tuple[str, ...]:
    return OWN.get(name) or REQUIREMENTS[name]


STAMP = "bench-requirements.txt"


class EnvError(Exception):
    """Raised when a peer's environment cannot be created or installed."""


def python(peer: str) -> Path:
    """The interpreter of ``peer``'s environment."""
    return VENVS / peer / "bin" / "python"


def ensure(peer: str, *, upgrade: bool = False) -> Path:
    """Create and install ``peer``'s environment unless it is there; its interpreter."""
    env, py = VENVS / peer, python(peer)
    wanted = "\n".join(requirements(peer)) + "\n"
    stamp = env / STAMP
    if not py.exists():
        print(f"creating {env.relative_to(ROOT)}/ ...", file=sys.stderr, flush=True)
        _run([sys.executable, "-m", "venv", str(env)], peer)
    if upgrade or not stamp.exists() or stamp.read_text() != wanted:
        print(f"installing {' '.join(requirements(peer))} ...", file=sys.stderr, flush=True)
        _run(pip_command(peer, py, upgrade=upgrade), peer)
        stamp.write_text(wanted)
    return py


def pip_command(peer: str, py: Path, *, upgrade: bool = False) -> list[str]:
    flags = ["--quiet", "--disable-pip-version-check"] + (["--upgrade"] if upgrade else [])
    return [str(py), "-m", "pip", "install", *flags, *requirements(peer)]


def _run(command: list[str], peer: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise EnvError(f"{' '.join(command[:4])} ... failed for {peer}:\n{tail}")
