"""The web app of the whole-stack benchmarks, whoever enqueues: FastAPI under uvicorn, one
process, ``POST /signup`` that decodes and validates a JSON body and enqueues one task,
the way our users' handlers do.

The enqueue is its caller's: ``benchmarks/webapp.py`` serves it with aqueue or with no
enqueue at all (``make bench``), ``benchmarks/peers/webapp.py`` with each system's
adapter (``make bench-peers``). This module imports neither aqueue nor any peer: it
runs in the peers' web environments too (``benchmarks/peers/envs.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Literal

import msgspec
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response


class Signup(msgspec.Struct):
    email: str
    plan: str = "free"


# ``await enqueue(signup)``: enqueue the welcome task of one signup.
Enqueue = Callable[[Signup], Awaitable[None]]
# Opens what enqueues (a connected client) for the app's lifetime.
Source = Callable[[], AbstractAsyncContextManager[Enqueue]]


def make_app(source: Source) -> FastAPI:
    """The app; ``source`` is opened in its lifespan and closed at its shutdown."""
    state: dict[str, Enqueue] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with source() as enqueue:
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


def serve(app: FastAPI, port: int, loop: Literal["auto", "asyncio"] = "auto") -> None:
    """Serve ``app`` on 127.0.0.1:``port`` until SIGTERM, without per-request logging."""
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, loop=loop)
