"""Enqueue background work from a Flask view with ``aqueue.SyncClient``.

The view answers ``202 Accepted`` as soon as the task is safely stored in Redis; a
worker process sends the welcome email in the background. Flask views are
synchronous: the ``SyncClient`` blocks the request's thread only for the enqueue's
round trip, and the app's one SyncClient serves every thread of the server.

Run it (from the repository root, with a Redis or Valkey server)::

    export AQUEUE_URL=redis://localhost:6379/0
    flask --app examples.flask_app run                # the web app
    aqueue worker examples.flask_app:mux              # the worker, in another shell
    curl -i localhost:5000/signup -H 'content-type: application/json' \\
         -d '{"email": "ada@example.com", "name": "Ada"}'

Under gunicorn, which forks its workers, an app created before the fork (``--preload``)
is fine: a forked process starts its own connections and thread on its first call.
"""

from __future__ import annotations

import logging
import os

import msgspec
from flask import Flask, request
from flask.typing import ResponseReturnValue

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


def create_app(url: str | None = None) -> Flask:
    """The app, enqueueing to ``url`` (default: ``$AQUEUE_URL``, then localhost).
    Creating it does no I/O: the SyncClient connects on the first enqueue."""
    app = Flask(__name__)
    queue = aqueue.SyncClient(url or os.environ.get("AQUEUE_URL", "redis://localhost:6379/0"))
    app.extensions["aqueue"] = queue

    @app.post("/signup")
    def signup() -> ResponseReturnValue:
        try:
            body = msgspec.json.decode(request.get_data(), type=Signup)
        except msgspec.DecodeError as exc:  # also covers ValidationError
            return {"error": str(exc)}, 422
        try:
            info = queue.enqueue(send_welcome, body)
        except aqueue.PayloadTooLarge as exc:
            return {"error": str(exc)}, 413
        except aqueue.BrokerUnavailable:
            return {"error": "queue unavailable, retry"}, 503
        return {"id": info.id}, 202

    return app


# For `flask --app examples.flask_app run` (Flask finds `create_app` too).
app = create_app()
