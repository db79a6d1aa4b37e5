"""Enqueue background work from a FastAPI endpoint, with the worker in the same process.

The endpoint answers ``202 Accepted`` as soon as the task is safely stored in Redis;
the worker, started in the app's lifespan on the same event loop, sends the welcome
email in the background. To scale the worker apart from the web server later, remove
it from the lifespan and run ``aqueue worker examples.fastapi_app:mux`` instead.

Run it (from the repository root, with a Redis or Valkey server)::

    AQUEUE_URL=redis://localhost:6379/0 uvicorn examples.fastapi_app:app
    curl -i localhost:8000/signup -H 'content-type: application/json' \\
         -d '{"email": "ada@example.com", "name": "Ada"}'
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
from fastapi import FastAPI, HTTPException, Request

import aqueue

log = logging.getLogger(__name__)


class Signup(msgspec.Struct):
    """The request body and the task payload: one type validates both."""

    email: str
    name: str


mux = aqueue.Mux()

# Stands in for a mail service, so you (and the tests) can see what the worker did:
# task id -> address the welcome email went to.
sent: dict[str, str] = {}


@mux.task("welcome:send", max_retry=5, timeout=30)
async def send_welcome(ctx: aqueue.Context, signup: Signup) -> None:
    log.info("welcoming %s <%s> (task %s)", signup.name, signup.email, ctx.task_id)
    sent[ctx.task_id] = signup.email


def create_app(url: str | None = None) -> FastAPI:
    """The app, serving tasks from ``url`` (default: ``$AQUEUE_URL``, then localhost).

    Creating it does no I/O: the client and the worker connect in the lifespan.
    """
    redis_url = url or os.environ.get("AQUEUE_URL", "redis://localhost:6379/0")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One client for the whole app; the worker runs in the background of the
        # `async with` block. On shutdown the worker stops claiming and lets running
        # tasks finish (within its shutdown_timeout) before the client closes.
        async with (
            aqueue.Client(redis_url) as client,
            aqueue.Worker(mux, redis_url, concurrency=20, shutdown_timeout=5),
        ):
            app.state.aqueue = client
            yield

    app = FastAPI(title="aqueue + FastAPI", lifespan=lifespan)

    @app.post("/signup", status_code=202)
    async def signup(request: Request) -> dict[str, str]:
        try:
            body = msgspec.json.decode(await request.body(), type=Signup)
        except msgspec.DecodeError as exc:  # also covers ValidationError
            raise HTTPException(status_code=422, detail=str(exc)) from None
        client: aqueue.Client = request.app.state.aqueue
        try:
            info = await client.enqueue(send_welcome, body)
        except aqueue.BrokerUnavailable:
            raise HTTPException(status_code=503, detail="queue unavailable, retry") from None
        return {"id": info.id}

    return app


# For `uvicorn examples.fastapi_app:app`.
app = create_app()
