"""Enqueue background work from an aiohttp handler, with the worker in the same process.

The handler answers ``202 Accepted`` as soon as the task is safely stored in Redis;
the worker, started by a cleanup context on the app's event loop, sends the welcome
email in the background. To scale the worker apart from the web server later, remove
it from ``aqueue_context`` and run ``aqueue worker examples.aiohttp_app:mux`` instead.

Run it (with a Redis or Valkey server)::

    AQUEUE_URL=redis://localhost:6379/0 python examples/aiohttp_app.py
    curl -i localhost:8080/signup -H 'content-type: application/json' \\
         -d '{"email": "ada@example.com", "name": "Ada"}'
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator

import msgspec
from aiohttp import web

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


# Typed slots in the application for the client and its URL.
CLIENT = web.AppKey("aqueue_client", aqueue.Client)
URL = web.AppKey("aqueue_url", str)


async def aqueue_context(app: web.Application) -> AsyncIterator[None]:
    # Runs up to `yield` at startup and the rest at cleanup, in the same task, so the
    # `async with` blocks hold for the app's whole life. On shutdown the worker stops
    # claiming and lets running tasks finish (within shutdown_timeout) first.
    async with (
        aqueue.Client(app[URL]) as client,
        aqueue.Worker(mux, app[URL], concurrency=20, shutdown_timeout=5),
    ):
        app[CLIENT] = client
        yield


async def signup(request: web.Request) -> web.Response:
    try:
        body = msgspec.json.decode(await request.read(), type=Signup)
    except msgspec.DecodeError as exc:  # also covers ValidationError
        return web.json_response({"detail": str(exc)}, status=422)
    try:
        info = await request.app[CLIENT].enqueue(send_welcome, body)
    except aqueue.PayloadTooLarge as exc:  # the client's fault: too big to enqueue
        return web.json_response({"detail": str(exc)}, status=413)
    except (aqueue.InvalidPayload, aqueue.InvalidOption) as exc:
        return web.json_response({"detail": str(exc)}, status=422)
    except aqueue.BrokerUnavailable:
        return web.json_response({"detail": "queue unavailable, retry"}, status=503)
    return web.json_response({"id": info.id}, status=202)


def create_app(url: str | None = None) -> web.Application:
    """The app, serving tasks from ``url`` (default: ``$AQUEUE_URL``, then localhost).

    Creating it does no I/O: the client and the worker connect at startup.
    """
    app = web.Application()
    app[URL] = url or os.environ.get("AQUEUE_URL", "redis://localhost:6379/0")
    app.cleanup_ctx.append(aqueue_context)
    app.router.add_post("/signup", signup)
    return app


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    web.run_app(create_app(), host="127.0.0.1", port=8080)
