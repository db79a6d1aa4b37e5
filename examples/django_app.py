"""Enqueue background work from a Django view with ``aqueue.SyncClient``.

A whole Django project in one file: settings, one view, its URL. The view answers
``202 Accepted`` as soon as the task is safely stored in Redis; a worker process sends
the welcome email in the background. Django views are synchronous: the ``SyncClient``
blocks the request's thread only for the enqueue's round trip, and one SyncClient,
made once per process, serves every thread of the server.

Run it (from the repository root, with a Redis or Valkey server)::

    export AQUEUE_URL=redis://localhost:6379/0
    python examples/django_app.py runserver          # the web app
    aqueue worker examples.django_app:mux            # the worker, in another shell
    curl -i localhost:8000/signup -H 'content-type: application/json' \\
         -d '{"email": "ada@example.com", "name": "Ada"}'

In a real project the settings go to ``settings.py``, the view to ``views.py`` and the
handlers to a ``tasks.py`` that both the views and ``aqueue worker`` import. Under
gunicorn or uWSGI, which fork their workers, the module-level SyncClient is fine: a
forked process starts its own connections and thread on its first call.
"""

from __future__ import annotations

import logging
import os
import sys

import django
import msgspec
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.urls import path

import aqueue

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret"),
        ROOT_URLCONF=__name__,
        # testserver: the host name of Django's test client.
        ALLOWED_HOSTS=["localhost", "127.0.0.1", "testserver"],
        # A JSON API without sessions or forms: no middleware needed here.
        MIDDLEWARE=[],
    )
    django.setup()

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


# One per process, shared by every request thread. Creating it does no I/O: it
# connects on the first enqueue.
queue = aqueue.SyncClient(os.environ.get("AQUEUE_URL", "redis://localhost:6379/0"))


def signup(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    try:
        body = msgspec.json.decode(request.body, type=Signup)
    except msgspec.DecodeError as exc:  # also covers ValidationError
        return JsonResponse({"error": str(exc)}, status=422)
    try:
        info = queue.enqueue(send_welcome, body)
    except aqueue.PayloadTooLarge as exc:
        return JsonResponse({"error": str(exc)}, status=413)
    except aqueue.BrokerUnavailable:
        return JsonResponse({"error": "queue unavailable, retry"}, status=503)
    return JsonResponse({"id": info.id}, status=202)


urlpatterns = [path("signup", signup)]


if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
