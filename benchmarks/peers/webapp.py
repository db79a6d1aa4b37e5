"""The web_signup app for one system, in its web environment (``envs``): the signup app
(``benchmarks/signup_app.py``) enqueuing ``welcome(email, plan)`` through the system's
adapter (``Producer.signup``), on the default asyncio loop. ``none`` for SYSTEM serves
the same app without the enqueue (the ceiling).

    python -m benchmarks.peers.webapp SYSTEM PORT URL
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import AsyncIterator

from ..signup_app import Enqueue, Signup, make_app, serve
from .child import load


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.webapp")
    parser.add_argument("system")
    parser.add_argument("port", type=int)
    parser.add_argument("url")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    @contextlib.asynccontextmanager
    async def source() -> AsyncIterator[Enqueue]:
        if args.system == "none":

            async def nothing(s: Signup) -> None:
                return None

            yield nothing
            return
        async with load(args.system).producer(args.url) as producer:

            async def enqueue(s: Signup) -> None:
                await producer.signup(s.email, s.plan)

            yield enqueue

    serve(make_app(source), args.port, loop="asyncio")


if __name__ == "__main__":
    main()
