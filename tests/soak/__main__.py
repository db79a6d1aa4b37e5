"""``python -m tests.soak`` (``make soak``): the randomized fault soak, judged by its oracle.

Prints the seed first, then the verdict; exit status 0 when the oracle found nothing,
1 when it did (the same ``--seed`` draws the same fault schedule again).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import anyio

from .run import Settings, soak
from .servers import BINARIES


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak", description="aqueue's randomized fault soak (issue 18)"
    )
    parser.add_argument("--seed", type=int, default=None, help="the fault schedule's seed")
    parser.add_argument("--minutes", type=float, default=30.0, help="fault phase (default 30)")
    parser.add_argument("--slots", type=int, default=6, help="worker slots (default 6)")
    parser.add_argument(
        "--supervised", type=int, default=2, help="slots run with --processes 2 (default 2)"
    )
    parser.add_argument(
        "--server", choices=[*BINARIES, "both"], default="both", help="default: both, in turn"
    )
    parser.add_argument("--every", type=float, default=8.0, help="mean seconds between faults")
    parser.add_argument("--rate", type=float, default=25.0, help="enqueues per second")
    parser.add_argument("--lease-ttl", type=float, default=6.0)
    parser.add_argument("--logs", type=Path, default=None, help="worker logs (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="one JSON verdict per server")
    args = parser.parse_args(argv)
    if args.supervised > args.slots:
        parser.error(f"--supervised {args.supervised} is more than --slots {args.slots}")
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="aqueue-soak-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"soak seed {seed}; worker logs in {logs}", flush=True)
    failed = False
    for server in list(BINARIES) if args.server == "both" else [args.server]:
        cfg = Settings(
            seed=seed, seconds=args.minutes * 60, slots=args.slots, supervised=args.supervised,
            server=server, lease_ttl=args.lease_ttl, rate=args.rate, every=args.every,
            settle=max(90.0, 10 * args.lease_ttl), logs=logs,
        )  # fmt: skip
        verdict = anyio.run(soak, cfg)
        failed |= not verdict.ok
        if args.json:
            out = {"ok": verdict.ok, **verdict.figures, "violations": verdict.violations}
            print(json.dumps(out))
            continue
        print(f"\n== {server}: {'PASS' if verdict.ok else 'FAIL'}")
        for k, v in verdict.figures.items():
            print(f"  {k}: {v}")
        for v in verdict.violations[:50]:
            print(f"  VIOLATION: {v}")
        if len(verdict.violations) > 50:
            print(f"  ... and {len(verdict.violations) - 50} more")
    if failed:
        print(f"\nreproduce the schedule: make soak ARGS='--seed {seed}'", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
