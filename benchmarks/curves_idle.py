"""Idle workers for the ``scale_workers`` cost curve (``benchmarks/curves.py``), in one
process of several.

    python -m benchmarks.curves_idle URL WORKERS

Starts ``WORKERS`` Worker objects serving the queue ``default`` (concurrency 10), prints
``ready`` once every one made first contact, then idles until terminated.
"""

from __future__ import annotations

import logging
import sys

import anyio

import aqueue


async def idle(url: str, count: int) -> None:
    mux = aqueue.Mux()

    @mux.task("curve:idle")
    async def never(ctx: aqueue.Context) -> None:
        """Registered so that the workers serve ``default``; nothing enqueues it."""

    workers = [aqueue.Worker(mux, url, concurrency=10, scheduler=False) for _ in range(count)]
    async with anyio.create_task_group() as tg:
        for w in workers:
            await tg.start(_serve, w)
        print("ready", flush=True)


async def _serve(worker: aqueue.Worker, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    async with worker:
        task_status.started()
        await anyio.sleep_forever()


def main() -> None:
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    anyio.run(idle, sys.argv[1], int(sys.argv[2]))


if __name__ == "__main__":
    main()
