"""The web app of ``make bench``'s whole-stack benchmark (``benchmarks/web.py``): the signup
app (``benchmarks/signup_app.py``) enqueuing with aqueue, or, with ``none``, the same app
without the enqueue (the ceiling). The peers' variants are ``benchmarks/peers/webapp.py``.

    python -m benchmarks.webapp PORT URL {aqueue,none}
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import aqueue

from .signup_app import Enqueue, Signup, make_app, serve

mux = aqueue.Mux()


@mux.task("web:welcome")
async def welcome(ctx: aqueue.Context, s: Signup) -> None:
    """What the app enqueues (never run here)."""


@contextlib.asynccontextmanager
async def _aqueue(url: str) -> AsyncIterator[Enqueue]:
    async with aqueue.Client(url) as client:

        async def enqueue(s: Signup) -> None:
            await client.enqueue(welcome, s)

        yield enqueue


@contextlib.asynccontextmanager
async def _none(url: str) -> AsyncIterator[Enqueue]:
    async def enqueue(s: Signup) -> None:
        return None

    yield enqueue


SOURCES = {"aqueue": _aqueue, "none": _none}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.webapp")
    parser.add_argument("port", type=int)
    parser.add_argument("url")
    parser.add_argument("system", choices=list(SOURCES))
    args = parser.parse_args()
    opened = SOURCES[args.system]
    serve(make_app(lambda: opened(args.url)), args.port)


if __name__ == "__main__":
    main()
