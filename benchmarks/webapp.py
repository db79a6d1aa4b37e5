"""The web app of the whole-stack benchmark (``benchmarks/web.py``): FastAPI under uvicorn,
one process, ``POST /signup`` that validates a JSON body and enqueues one task, the way
our users' handlers do. ``--system none`` serves the same app without the enqueue (the
ceiling); ``--system arq|saq`` enqueues with that peer (``make bench-peers``).

    python -m benchmarks.webapp PORT URL {aqueue,none,arq,saq}
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

import aqueue


class Signup(msgspec.Struct):
    email: str
    plan: str = "free"


mux = aqueue.Mux()


@mux.task("web:welcome")
async def welcome(ctx: aqueue.Context, s: Signup) -> None:
    """What the app enqueues (never run here)."""


Enqueue = Callable[[Signup], Awaitable[None]]


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


@contextlib.asynccontextmanager
async def _peer(system: str, url: str) -> AsyncIterator[Enqueue]:
    """A peer's producer (benchmarks/peers/adapter_<system>.py), its ``item`` call."""
    adapter: Any = importlib.import_module(f"benchmarks.peers.adapter_{system}")
    async with adapter.producer(url) as producer:

        async def enqueue(s: Signup) -> None:
            await producer.item(len(s.email))

        yield enqueue


def make_app(system: str, url: str) -> FastAPI:
    state: dict[str, Enqueue] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = {"aqueue": _aqueue, "none": _none}.get(system)
        source = opened(url) if opened is not None else _peer(system, url)
        async with source as enqueue:
            state["enqueue"] = enqueue
            yield

    app = FastAPI(lifespan=lifespan)
    decoder = msgspec.json.Decoder(Signup)

    @app.post("/signup")
    async def signup_route(request: Request) -> Response:
        try:
            s = decoder.decode(await request.body())
        except msgspec.ValidationError as exc:
            return Response(str(exc), status_code=422)
        await state["enqueue"](s)
        return Response(b'{"ok":true}', status_code=202, media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("url")
    parser.add_argument("system", choices=["aqueue", "none", "arq", "saq"])
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.system, args.url),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
