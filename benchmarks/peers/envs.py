"""The peers' virtual environments: ``.bench-venvs/<peer>/``, one per peer, never .venv.

aqueue gets one too, ``.bench-venvs/aqueue/``, with the project installed (editable)
and its core dependencies only: the project's .venv also holds the dev tools and the
optional extras (OpenTelemetry, which redis-py imports when present, Prometheus, the
dashboard), which would make aqueue's worker heavier than a user's.

Each is created on first use with the runner's Python and the peer installed from
PyPI at its latest release (the report records the versions). A stamp file holds the
requirements it was installed with, so later runs start without touching the network;
``--upgrade`` (``ensure(upgrade=True)``) moves every peer to its latest release.

The ``web_signup`` workload serves a FastAPI app under uvicorn with each system's
enqueue: it runs in a second environment per system, ``.bench-venvs/web/<name>/``
(``ensure(name, web=True)``), holding the system's environment as frozen (the same
versions of everything) plus the app's stack (``WEB``, at the versions the project's
lock file pins, the same for every system). The web stack stays out of the first
environments because installing it changes what some peers import: taskiq's
``taskiq_dependencies`` imports FastAPI whenever it is installed, which would weigh on
taskiq's ``worker_rss``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..common import ROOT

VENVS = ROOT / ".bench-venvs"
LOCK = ROOT / "constraints" / "dev.txt"

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


# The web_signup app's stack: FastAPI (pydantic and starlette are its own dependencies),
# uvicorn (h11 its HTTP parser: no httptools, and no uvloop anywhere), msgspec (the app
# decodes the request body with it, as benchmarks/webapp.py does for `make bench`).
WEB = ("fastapi", "starlette", "pydantic", "uvicorn", "h11", "msgspec")


def requirements(name: str) -> tuple[str, ...]:
    return OWN.get(name) or REQUIREMENTS[name]


def web_pins(lock: Path = LOCK) -> tuple[str, ...]:
    """``WEB``, each as ``name==version`` where the lock file pins it."""
    pinned: dict[str, str] = {}
    if lock.exists():
        for line in lock.read_text().splitlines():
            name, sep, version = line.strip().partition("==")
            if sep:
                pinned[_canonical(name)] = version
    return tuple(f"{w}=={pinned[w]}" if w in pinned else w for w in WEB)


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


STAMP = "bench-requirements.txt"


class EnvError(Exception):
    """Raised when a peer's environment cannot be created or installed."""


def python(peer: str, *, web: bool = False) -> Path:
    """The interpreter of ``peer``'s environment (or of its web environment)."""
    return (VENVS / "web" / peer if web else VENVS / peer) / "bin" / "python"


def ensure(peer: str, *, upgrade: bool = False, web: bool = False) -> Path:
    """Create and install ``peer``'s environment unless it is there; its interpreter.
    With ``web``, its web environment's (made after the first, from its freeze)."""
    py = python(peer)
    wanted = requirements(peer)
    if web:
        wanted = web_requirements(peer, frozen(ensure(peer, upgrade=upgrade), peer))
        py = python(peer, web=True)
    env = py.parent.parent
    stamp = env / STAMP
    if not py.exists():
        print(f"creating {env.relative_to(ROOT)}/ ...", file=sys.stderr, flush=True)
        _run([sys.executable, "-m", "venv", str(env)], peer)
    text = "\n".join(wanted) + "\n"
    if (upgrade and not web) or not stamp.exists() or stamp.read_text() != text:
        shown = " ".join(wanted) if not web else f"{peer}'s freeze and {' '.join(web_pins())}"
        print(f"installing {shown} ...", file=sys.stderr, flush=True)
        _run(pip_command(peer, py, upgrade=upgrade and not web, wanted=wanted), peer)
        stamp.write_text(text)
    return py


def frozen(py: Path, peer: str) -> list[str]:
    """``pip freeze`` of an environment, its editable installs left out."""
    command = [str(py), "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise EnvError(f"pip freeze failed for {peer}: {done.stderr.strip()[-500:]}")
    return [line for line in done.stdout.splitlines() if line and not line.startswith("#")]


def web_requirements(peer: str, freeze: list[str]) -> tuple[str, ...]:
    """What ``peer``'s web environment installs: its first environment's versions (and
    aqueue from this checkout), with ``WEB`` at the lock's versions instead of its own."""
    web = {_canonical(w) for w in WEB}
    kept = [line for line in freeze if _canonical(line.partition("==")[0]) not in web]
    return (*OWN.get(peer, ()), *kept, *web_pins())


def pip_command(
    peer: str, py: Path, *, upgrade: bool = False, wanted: tuple[str, ...] | None = None
) -> list[str]:
    flags = ["--quiet", "--disable-pip-version-check"] + (["--upgrade"] if upgrade else [])
    return [str(py), "-m", "pip", "install", *flags, *(wanted or requirements(peer))]


def _run(command: list[str], peer: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise EnvError(f"{' '.join(command[:4])} ... failed for {peer}:\n{tail}")
