"""The synchronous web examples work as shown: a Django or Flask view enqueues through
``aqueue.SyncClient`` and answers 202 at once, and a worker processes the task.

Each app runs under its framework's own test client (in this test's thread, with no
event loop, as a view runs in a server's thread) against a real server; the worker is
``aqueue.testing.drain``, run after the request as ``aqueue worker`` would run beside
the web server.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis
from django.test import Client as DjangoClient
from flask.testing import FlaskClient

import aqueue
from aqueue._redis.keys import queue_keys
from aqueue.testing import drain

# examples/ is a folder of scripts, not a package: import them by their file names.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import django_app
import flask_app

KEYS = queue_keys("aq", "default")
SIGNUP = {"email": "ada@example.com", "name": "Ada"}
BAD_BODIES = [
    pytest.param(b'{"email": "ada@example.com"}', id="missing-field"),
    pytest.param(b'{"email": 42, "name": "Ada"}', id="wrong-type"),
    pytest.param(b"not json", id="not-json"),
]
# Over the Client's default max_payload_bytes (1 MiB).
HUGE = {"email": "ada@example.com", "name": "A" * (2 << 20)}
# Nothing listens there: connecting is refused at once.
DEAD_URL = "redis://127.0.0.1:1/0"


@pytest.fixture
def r(aqueue_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(aqueue_url)
    yield client
    client.close()


def processed(mux: aqueue.Mux, url: str, sent: dict[str, str], task_id: str) -> str:
    """Run a worker until the queue is empty; the address the task's email went to."""
    anyio.run(lambda: drain(mux, url, timeout=20))
    return sent[task_id]


def nothing_enqueued(r: redis.Redis) -> bool:
    return r.hlen(KEYS.states) == 0 and r.llen(KEYS.pending) == 0


# -- Django ----------------------------------------------------------------------------


@pytest.fixture
def django(monkeypatch: pytest.MonkeyPatch, aqueue_url: str) -> Iterator[DjangoClient]:
    """Django's test client, the example's SyncClient pointed at the test server."""
    with aqueue.SyncClient(aqueue_url) as queue:
        monkeypatch.setattr(django_app, "queue", queue)
        yield DjangoClient()


def test_django_signup_answers_202_and_a_worker_processes_it(
    django: DjangoClient, aqueue_url: str
) -> None:
    response = django.post("/signup", SIGNUP, content_type="application/json")
    assert response.status_code == 202
    task_id = response.json()["id"]
    assert processed(django_app.mux, aqueue_url, django_app.sent, task_id) == SIGNUP["email"]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_django_bad_signup_body_gets_422_and_enqueues_nothing(
    django: DjangoClient, r: redis.Redis, body: bytes
) -> None:
    response = django.post("/signup", body, content_type="application/json")
    assert response.status_code == 422
    assert "id" not in response.json()
    assert nothing_enqueued(r)


def test_django_too_large_a_payload_gets_413(django: DjangoClient, r: redis.Redis) -> None:
    response = django.post("/signup", HUGE, content_type="application/json")
    assert response.status_code == 413
    assert "payload" in response.json()["error"]
    assert nothing_enqueued(r)


def test_django_without_a_server_answers_503(monkeypatch: pytest.MonkeyPatch) -> None:
    with aqueue.SyncClient(DEAD_URL, timeout=1.0) as queue:
        monkeypatch.setattr(django_app, "queue", queue)
        response = DjangoClient().post("/signup", SIGNUP, content_type="application/json")
    assert response.status_code == 503


def test_django_signup_takes_post_only(django: DjangoClient) -> None:
    assert django.get("/signup").status_code == 405


# -- Flask -----------------------------------------------------------------------------


@pytest.fixture
def flask(aqueue_url: str) -> Iterator[FlaskClient]:
    app = flask_app.create_app(aqueue_url)
    with app.test_client() as client:
        yield client
    app.extensions["aqueue"].close()


def test_flask_signup_answers_202_and_a_worker_processes_it(
    flask: FlaskClient, aqueue_url: str
) -> None:
    response = flask.post("/signup", json=SIGNUP)
    assert response.status_code == 202
    assert response.json is not None
    task_id = response.json["id"]
    assert processed(flask_app.mux, aqueue_url, flask_app.sent, task_id) == SIGNUP["email"]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_flask_bad_signup_body_gets_422_and_enqueues_nothing(
    flask: FlaskClient, r: redis.Redis, body: bytes
) -> None:
    response = flask.post("/signup", data=body, content_type="application/json")
    assert response.status_code == 422
    assert response.json is not None
    assert "id" not in response.json
    assert nothing_enqueued(r)


def test_flask_too_large_a_payload_gets_413(flask: FlaskClient, r: redis.Redis) -> None:
    response = flask.post("/signup", json=HUGE)
    assert response.status_code == 413
    assert response.json is not None
    assert "payload" in response.json["error"]
    assert nothing_enqueued(r)


def test_flask_without_a_server_answers_503() -> None:
    app = flask_app.create_app(DEAD_URL)
    try:
        assert app.test_client().post("/signup", json=SIGNUP).status_code == 503
    finally:
        app.extensions["aqueue"].close()
