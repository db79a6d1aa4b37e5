"""The fault soak's short form, inside ``make test``: about forty seconds of faults on
each server kind (Valkey 9 and Redis 7, both restarted under AOF ``always`` and
``everysec``), three worker slots (one a ``--processes 2`` supervisor), every kind of
work, judged by the oracle (tests/soak/oracle.py). ``make soak`` runs it for 30 minutes.

The schedule's seed is fixed so that CI draws the same faults every run;
``AQUEUE_SOAK_SEED`` picks another, and a failure names the seed that reproduces it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .run import Settings, soak

pytestmark = pytest.mark.anyio

SEED = int(os.environ.get("AQUEUE_SOAK_SEED", "7"))


@pytest.mark.timeout(400)
@pytest.mark.parametrize("server", ["valkey", "redis"])
async def test_short_soak_loses_nothing_runs_nothing_twice_and_leaves_nothing(
    server: str, tmp_path: Path
) -> None:
    if server == "redis" and shutil.which("redis-server") is None:
        pytest.skip("no redis-server binary on this machine (Debian package redis-server)")
    cfg = Settings(
        seed=SEED, seconds=40, slots=3, supervised=1, server=server, every=1.5, rate=20,
        settle=120, logs=tmp_path,
    )  # fmt: skip
    verdict = await soak(cfg)
    report = "\n".join(f"{k}: {v}" for k, v in verdict.figures.items())
    assert verdict.ok, (
        f"the soak's oracle found {len(verdict.violations)} violations (seed {SEED}; "
        f"reproduce with make soak ARGS='--seed {SEED} --minutes 0.67 --slots 3 "
        f"--supervised 1 --every 1.5 --server {server}'):\n"
        + "\n".join(verdict.violations[:30])
        + f"\n{report}"
    )
