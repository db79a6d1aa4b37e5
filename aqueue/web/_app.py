"""The dashboard as a Starlette app: read-only pages over the ``Inspector``, and, when
enabled, the repair actions as CSRF-protected POSTs.

Every page extends ``base.html`` and puts what changes in its ``live`` block. A page
asked for with the ``X-Aqueue-Live`` header renders that block alone: the page's script
polls it and swaps it in, so figures stay current without a full reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote

import jinja2
import redis.exceptions as rexc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import _format
from .._inspector import Inspector
from .._reads import read_holder, read_live_workers
from .._redis.broker import ServerLike
from .._task import ACTION_STATES, Action, State, actions_for
from ..errors import AqueueError, BrokerUnavailable, QueueNotFound, TaskNotFound
from . import _flowpages, _oncall, _views
from ._security import CSRF_COOKIE, CSRF_FIELD, AuthMiddleware, Csrf, check_auth

HERE = Path(__file__).parent
# In the order an operator reads them: waiting, running, later, in trouble, done.
STATES: list[str] = [
    s.value
    for s in (State.PENDING, State.ACTIVE, State.SCHEDULED, State.RETRY, State.ARCHIVED,
              State.COMPLETED)
]  # fmt: skip
PAGE_SIZE = 20
HISTORY_DAYS = 14
FLASH_COOKIE = "aqueue_flash"
LIVE_HEADER = "x-aqueue-live"
# Seconds between the page's polls of its live block.
REFRESH = 3

# The bulk actions (URL name -> the states it takes) and the per-task actions of each
# state, both read from the table the Inspector enforces.
BULK = {f"{a}-all": ACTION_STATES[a] for a in (Action.RUN, Action.ARCHIVE, Action.DELETE)}
TASK_ACTIONS = {s: actions_for(s) for s in STATES}
_DONE = {Action.RUN: "moved to pending", Action.ARCHIVE: "archived", Action.DELETE: "deleted",
         Action.CANCEL: "cancelled"}  # fmt: skip


class _Inspectors:
    """One Inspector per event loop: a connection pool belongs to the loop that opened
    it, and a test client (or a reloading server) may serve the app from a new loop.
    Keyed weakly by the loop itself: a new loop never inherits a dead loop's pool."""

    def __init__(self, url_or_redis: ServerLike) -> None:
        self._source = url_or_redis
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Inspector] = (
            weakref.WeakKeyDictionary()
        )
        Inspector(url_or_redis)  # check the URL now: a typo fails at creation

    def get(self) -> Inspector:
        loop = asyncio.get_running_loop()
        inspector = self._by_loop.get(loop)
        if inspector is None:
            inspector = self._by_loop[loop] = Inspector(self._source)
        return inspector

    async def close(self) -> None:
        inspector = self._by_loop.pop(asyncio.get_running_loop(), None)
        if inspector is not None:
            await inspector.close()


class Dashboard:
    def __init__(self, url_or_redis: ServerLike, *, read_only: bool) -> None:
        self.inspectors = _Inspectors(url_or_redis)
        self.read_only = read_only
        self.csrf = Csrf()
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # every value is escaped unless a template says otherwise
            undefined=jinja2.StrictUndefined,
        )
        self.env.globals.update(
            duration=_format.duration,
            relative=_format.relative,
            stamp=_format.stamp,
            size=_format.size,
            pretty=_views.pretty,
            short=_views.short,
            quote=lambda s: quote(str(s), safe=""),
            STATES=STATES,
            TASK_ACTIONS=TASK_ACTIONS,
            BULK=BULK,
            REFRESH=REFRESH,
        )

    # -- rendering -----------------------------------------------------------------------

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        live = request.headers.get(LIVE_HEADER) == "1"
        base = request.scope.get("root_path", "").rstrip("/")
        nonce = request.cookies.get(CSRF_COOKIE) or Csrf.new_nonce()
        flash = None if live else _read_flash(request)
        html = self.env.get_template(name).render(
            layout="live.html" if live else "base.html",
            base=base,
            path=request.url.path,
            read_only=self.read_only,
            csrf_field=CSRF_FIELD,
            csrf_token=self.csrf.token(nonce),
            flash=flash,
            **{"nav": "", **context},
        )
        response = HTMLResponse(html, status_code=status)
        response.headers["cache-control"] = "no-store"
        # Nothing here is meant to be framed, nor to run script from elsewhere.
        response.headers["content-security-policy"] = (
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
        )
        response.headers["x-content-type-options"] = "nosniff"
        cookie_path = base or "/"
        if request.cookies.get(CSRF_COOKIE) != nonce:
            response.set_cookie(CSRF_COOKIE, nonce, path=cookie_path, httponly=True,
                                samesite="strict")  # fmt: skip
        if flash is not None:
            response.delete_cookie(FLASH_COOKIE, path=cookie_path)
        return response

    def problem(self, request: Request, status: int, message: str) -> Response:
        return self.render(request, "problem.html", status=status, message=message)

    # -- pages ---------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        inspector = self.inspectors.get()
        names = await inspector.queues()
        infos = await asyncio.gather(*(inspector.queue_info(q) for q in names))
        histories = await asyncio.gather(*(inspector.history(q, HISTORY_DAYS) for q in names))
        days = _views.merge(list(histories))
        totals = {
            key: sum(getattr(i, key) for i in infos) for key in (*STATES, "processed", "failed")
        }
        watch = await _oncall.watch(inspector, infos)
        return self.render(
            request, "overview.html", queues=infos, totals=totals,
            chart=_views.chart(days) if days else None, watch=watch, nav="overview",
        )  # fmt: skip

    async def queue(self, request: Request) -> Response:
        inspector = self.inspectors.get()
        queue = request.path_params["queue"]
        state = request.query_params.get("state", State.PENDING.value)
        if state not in STATES:
            return self.problem(request, 400, f"unknown state {state!r}: use one of "
                                + ", ".join(STATES))  # fmt: skip
        page = _page(request.query_params.get("page"))
        task_type = request.query_params.get("type", "").strip()
        info = await inspector.queue_info(queue)
        scanned = None
        if task_type:  # the matches among the first TYPE_SCAN tasks, paged here
            matching, scanned = await _oncall.of_type(inspector, queue, state, task_type)
            count = len(matching)
            tasks = matching[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        else:
            tasks = await inspector.list_tasks(queue, state, page=page, size=PAGE_SIZE)
            count = getattr(info, state)
        pages = max(1, math.ceil(count / PAGE_SIZE))
        history = list(reversed(await inspector.history(queue, HISTORY_DAYS)))
        watch = await _oncall.watch(inspector, [info])
        return self.render(
            request, "queue.html", info=info, state=state, tasks=tasks, page=page,
            pages=pages, count=count, chart=_views.chart(history), task_type=task_type,
            scanned=scanned, watch=watch, nav="overview",
        )  # fmt: skip

    async def task(self, request: Request) -> Response:
        queue, task_id = request.path_params["queue"], request.path_params["task_id"]
        inspector = self.inspectors.get()
        task = await inspector.get_task(queue, task_id)
        holder = None
        if task.state == State.ACTIVE:
            holder = await read_holder(inspector.broker, queue, task_id)
        return self.render(request, "task.html", task=task, holder=holder, nav="overview")

    async def search(self, request: Request) -> Response:
        """A task by id, in the queue given or in every queue: its page when there is
        one, the list when several queues hold that id."""
        task_id = request.query_params.get("id", "").strip()
        queue = request.query_params.get("queue", "").strip() or None
        if not task_id:
            return self.problem(request, 400, "give a task id to look for (?id=...)")
        found = await _oncall.find_task(self.inspectors.get(), task_id, queue)
        if len(found) == 1:
            t = found[0]
            base = request.scope.get("root_path", "").rstrip("/")
            url = f"{base}/queues/{quote(t.queue)}/tasks/{quote(t.id, safe='')}"
            return RedirectResponse(url, status_code=303)
        if not found:
            where = f"queue {queue!r}" if queue else "any queue"
            return self.problem(request, 404, f"no task {task_id!r} in {where}")
        return self.render(request, "search.html", task_id=task_id, tasks=found)

    async def workers(self, request: Request) -> Response:
        workers = await read_live_workers(self.inspectors.get().broker)
        return self.render(request, "workers.html", workers=workers, now=time.time(),
                           nav="workers")  # fmt: skip

    async def cron(self, request: Request) -> Response:
        inspector = self.inspectors.get()
        entries = await inspector.cron_entries()
        # A last run is linked only while its task exists (retention 0 deletes it).
        kept = await _oncall.existing(
            inspector, [(e.queue, e.history[0].task_id) for e in entries if e.history]
        )
        return self.render(request, "cron.html", entries=entries, kept=kept, nav="cron")

    async def limits(self, request: Request) -> Response:
        limits = await self.inspectors.get().limits()
        return self.render(request, "limits.html", limits=limits, nav="limits")

    # -- actions -------------------------------------------------------------------------

    async def queue_action(self, request: Request) -> Response:
        async def act(inspector: Inspector, queue: str, action: str) -> str:
            if action == "pause":
                await inspector.pause(queue)
                return f"queue {queue} paused: workers stop claiming its tasks"
            if action == "resume":
                await inspector.resume(queue)
                return f"queue {queue} resumed"
            raise _NotFound(f"no queue action {action!r}: use pause or resume")

        queue, action = request.path_params["queue"], request.path_params["action"]
        return await self.act(request, lambda i: act(i, queue, action), f"/queues/{queue}")

    async def task_action(self, request: Request) -> Response:
        queue, task_id = request.path_params["queue"], request.path_params["task_id"]
        action = request.path_params["action"]

        async def act(inspector: Inspector) -> str:
            calls: dict[str, Callable[[str, str], Awaitable[None]]] = {
                Action.RUN: inspector.run_task,
                Action.ARCHIVE: inspector.archive_task,
                Action.DELETE: inspector.delete_task,
                Action.CANCEL: inspector.cancel,
            }
            if action not in calls:
                raise _NotFound(f"no task action {action!r}: use {', '.join(calls)}")
            await calls[action](queue, task_id)
            return f"task {task_id} {_DONE[action]}"

        back = f"/queues/{quote(queue)}/tasks/{quote(task_id, safe='')}"
        if action == Action.DELETE:
            back = f"/queues/{quote(queue)}"
        return await self.act(request, act, back)

    async def bulk_action(self, request: Request) -> Response:
        queue, state = request.path_params["queue"], request.path_params["state"]
        action = request.path_params["action"]

        async def act(inspector: Inspector) -> str:
            calls = {
                "run-all": inspector.run_all,
                "archive-all": inspector.archive_all,
                "delete-all": inspector.delete_all,
            }
            if action not in calls:
                raise _NotFound(f"no bulk action {action!r}: use {', '.join(calls)}")
            n = await calls[action](queue, state)
            verb = {"run-all": "moved to pending", "archive-all": "archived",
                    "delete-all": "deleted"}[action]  # fmt: skip
            return f"{n} {state} task(s) of queue {queue} {verb}"

        return await self.act(request, act, f"/queues/{quote(queue)}?state={quote(state)}")

    async def act(
        self, request: Request, action: Callable[[Inspector], Awaitable[str]], back: str
    ) -> Response:
        """Check that actions are on and the CSRF token is right, run ``action``, and
        redirect to ``back`` with its message (or the error) to show there."""
        if self.read_only:
            return self.problem(
                request, 403,
                "this dashboard is read-only: actions are disabled (start it with "
                "`aqueue dash --allow-actions`, or dashboard(..., read_only=False))",
            )  # fmt: skip
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = next(iter(form.get(CSRF_FIELD, [])), None)
        if not self.csrf.valid(request.cookies.get(CSRF_COOKIE), token):
            return self.problem(
                request, 403,
                "refused: the form's CSRF token is missing or wrong; reload the page "
                "and try again",
            )  # fmt: skip
        try:
            message, kind = await action(self.inspectors.get()), "ok"
        except _NotFound as exc:
            return self.problem(request, 404, str(exc))
        except (QueueNotFound, TaskNotFound) as exc:
            message, kind = str(exc), "error"
        except BrokerUnavailable:
            raise
        except AqueueError as exc:
            # A refused move (StateRefused), an unknown state or a bad queue name: say
            # why, on the page it came from.
            message, kind = str(exc), "error"
        base = request.scope.get("root_path", "").rstrip("/")
        response = RedirectResponse(base + back, status_code=303)
        response.set_cookie(FLASH_COOKIE, quote(f"{kind}|{message}"), path=base or "/",
                            httponly=True, samesite="strict", max_age=60)  # fmt: skip
        return response


class _NotFound(Exception):
    pass


def _read_flash(request: Request) -> tuple[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    kind, _, message = unquote(raw).partition("|")
    return ("error" if kind == "error" else "ok", message)


def _page(text: str | None) -> int:
    try:
        return max(1, int(text or 1))
    except ValueError:
        return 1


def _errors(dash: Dashboard) -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    async def not_found(request: Request, exc: Exception) -> Response:
        return dash.problem(request, 404, str(exc))

    async def unavailable(request: Request, exc: Exception) -> Response:
        if isinstance(exc.__cause__, rexc.ResponseError):  # it answered: full, busy, ...
            return dash.problem(request, 503, f"the server could not serve this request: {exc}")
        return dash.problem(request, 503, f"the server is unreachable: {exc}")

    async def bad(request: Request, exc: Exception) -> Response:
        return dash.problem(request, 400, str(exc))

    async def failed(request: Request, exc: Exception) -> Response:
        # Lost connections and a server that cannot take commands now (OOM, LOADING, ...)
        # are BrokerUnavailable already; what redis-py may still raise is a refusal of
        # one command (READONLY, WRONGTYPE): a page that says so, not a 500.
        return dash.problem(request, 503, f"the server could not serve this request: {exc}")

    return {
        QueueNotFound: not_found,
        TaskNotFound: not_found,
        BrokerUnavailable: unavailable,
        AqueueError: bad,
        rexc.RedisError: failed,
        rexc.RedisClusterException: failed,
    }


class DashboardApp:
    """The ASGI app ``dashboard()`` returns. Served on its own, it closes its connections
    at shutdown; mounted in another app (whose lifespan does not reach it), call
    ``await app.close()`` in that app's lifespan."""

    def __init__(self, app: ASGIApp, dash: Dashboard) -> None:
        self._app = app
        self._dash = dash

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    async def close(self) -> None:
        """Close the connection pool this event loop opened."""
        await self._dash.inspectors.close()


def dashboard(
    url_or_redis: ServerLike,
    *,
    read_only: bool = True,
    auth: tuple[str, str] | str | None = None,
) -> DashboardApp:
    """The web dashboard as an ASGI app, to serve with ``aqueue dash`` or mount in your
    own application (``app.mount("/admin/queues", dashboard(url))``).

    ``read_only`` (the default) shows everything and changes nothing; pass ``False`` to
    enable pause/resume and the task actions. ``auth`` makes every route require either
    basic credentials, ``("user", "password")``, or a bearer token, ``"token"`` (a
    browser can send the token as the basic-auth password, with any user name). Leave
    it ``None`` when the mounting application authenticates requests itself.
    """
    checked = check_auth(auth)
    dash = Dashboard(url_or_redis, read_only=read_only)
    queue = "/queues/{queue}"
    routes = [
        Route("/", dash.overview, name="overview"),
        Route("/workers", dash.workers),
        Route("/cron", dash.cron),
        Route("/limits", dash.limits),
        *_flowpages.FlowPages(dash).routes(),
        Route("/search", dash.search),
        Route(queue, dash.queue),
        Route(queue + "/tasks/{task_id}", dash.task),
        Route(queue + "/tasks/{task_id}/{action}", dash.task_action, methods=["POST"]),
        Route(queue + "/states/{state}/{action}", dash.bulk_action, methods=["POST"]),
        Route(queue + "/{action}", dash.queue_action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Served on its own (``aqueue dash``, a test client): close the pool at shutdown.
        yield
        await dash.inspectors.close()

    app = Starlette(routes=routes, exception_handlers=_errors(dash), lifespan=lifespan)
    return DashboardApp(AuthMiddleware(app, checked) if checked is not None else app, dash)
