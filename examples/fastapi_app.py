"""Enqueue background work from a FastAPI endpoint, with the worker in the same process.

The endpoint answers ``202 Accepted`` as soon as the task is safely stored in Redis
(``413`` for a body too large to enqueue, ``422`` for one that does not validate, ``503``
while the server cannot be reached); the worker, started in the app's lifespan on the
same event loop, sends the welcome email in the background. To scale the worker apart
from the web server later, remove it from the lifespan and run ``aqueue worker
examples.fastapi_app:mux`` instead.

Run it (from the repository root, with a Redis or Valkey server)::

    AQUEUE_URL=redis://localhost:6379/0 uvicorn examples.fastapi_app:app
    curl -i localhost:8000/signup -H 'content-type: application/json' \\
         -d '{"email": "ada@example.com", "name": "Ada"}'

The queues dashboard (``pip install 'aqueue-redis[web]'``) is mounted at /admin/queues/ behind
the app's own auth: a FastAPI dependency that checks basic credentials against
``$ADMIN_PASSWORD`` (user ``admin``). Without that variable nobody gets in.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import msgspec
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.types import Receive, Scope, Send

import aqueue
from aqueue.web import DashboardApp, dashboard

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


# Module level: FastAPI resolves the dependency annotations below by name.
basic = HTTPBasic(realm="admin")


class Mounted(Response):
    """A response that hands the request to an ASGI app mounted at ``prefix``: how a
    FastAPI route, and so its dependencies, can guard a whole sub-application
    (``app.mount`` takes no dependencies)."""

    def __init__(self, app: DashboardApp, prefix: str) -> None:
        super().__init__()
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        root = scope.get("root_path", "") + self.prefix
        await self.app({**scope, "root_path": root}, receive, send)


def create_app(url: str | None = None, admin_password: str | None = None) -> FastAPI:
    """The app, serving tasks from ``url`` (default: ``$AQUEUE_URL``, then localhost),
    with the queues dashboard for user ``admin`` and ``admin_password`` (default:
    ``$ADMIN_PASSWORD``; without one the dashboard refuses everyone).

    Creating it does no I/O: the client and the worker connect in the lifespan.
    """
    redis_url = url or os.environ.get("AQUEUE_URL", "redis://localhost:6379/0")
    password = admin_password or os.environ.get("ADMIN_PASSWORD")

    def require_admin(credentials: Annotated[HTTPBasicCredentials, Depends(basic)]) -> str:
        """The app's own auth, as a dependency: any admin route can use it."""
        user_ok = secrets.compare_digest(credentials.username.encode(), b"admin")
        given = credentials.password.encode()
        password_ok = password is not None and secrets.compare_digest(given, password.encode())
        if not (user_ok and password_ok):
            raise HTTPException(
                status_code=401, detail="admins only", headers={"WWW-Authenticate": "Basic"}
            )
        return credentials.username

    # Actions on: only admins get this far. The app authenticates, so no auth= here.
    queues = dashboard(redis_url, read_only=False)

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
        await queues.close()  # a mounted dashboard's lifespan does not run: close it here

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
        except aqueue.PayloadTooLarge as exc:  # over the Client's max_payload_bytes (1 MiB)
            raise HTTPException(status_code=413, detail=str(exc)) from None
        except (aqueue.InvalidPayload, aqueue.InvalidOption) as exc:  # not encodable, ...
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return {"id": info.id}

    @app.get("/admin/queues", include_in_schema=False, dependencies=[Depends(require_admin)])
    async def dashboard_home() -> Response:
        return RedirectResponse("/admin/queues/")

    @app.api_route(
        "/admin/queues/{path:path}",
        methods=["GET", "POST"],
        include_in_schema=False,
        dependencies=[Depends(require_admin)],
    )
    async def dashboard_pages(path: str) -> Mounted:
        return Mounted(queues, "/admin/queues")

    return app


# For `uvicorn examples.fastapi_app:app`.
app = create_app()
