"""The web examples work as shown: a request enqueues a task and answers 202 at once,
and the worker embedded in the app's lifespan really processes it.

Each app runs under its framework's test client against a real server. "Processed" is
proven from both sides: the example's handler recorded the task, and the server shows
it acked (gone from the queue's states, counted in the processed total).
"""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis
from aiohttp.test_utils import TestClient as AiohttpTestClient
from aiohttp.test_utils import TestServer
from fastapi.testclient import TestClient

import aqueue
from aqueue._redis.keys import queue_keys

from .helpers import wait_for

# examples/ is a folder of scripts, not a package: import them by their file names.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import aiohttp_app
import fastapi_app

KEYS = queue_keys("aq", "default")
SIGNUP = {"email": "ada@example.com", "name": "Ada"}
BAD_BODIES = [
    pytest.param(b'{"email": "ada@example.com"}', id="missing-field"),
    pytest.param(b'{"email": 42, "name": "Ada"}', id="wrong-type"),
    pytest.param(b"not json", id="not-json"),
]
# Nothing listens there: connecting is refused at once.
DEAD_URL = "redis://127.0.0.1:1/0"


@pytest.fixture
def r(aqueue_url: str) -> Iterator[redis.Redis]:
    """A plain client to read the outcome straight from the server."""
    client = redis.Redis.from_url(aqueue_url)
    yield client
    client.close()


async def wait_until_processed(sent: dict[str, str], r: redis.Redis, task_id: str) -> None:
    """Wait until the handler ran for ``task_id`` and the server recorded its success."""

    def done() -> bool:
        gone = not r.hexists(KEYS.states, task_id)
        return task_id in sent and gone and r.hget(KEYS.stats, "p") == b"1"

    await wait_for(done)
    assert sent[task_id] == SIGNUP["email"]


def assert_nothing_enqueued(r: redis.Redis, sent: dict[str, str], before: dict[str, str]) -> None:
    """Checked after the app shut down: a wrongly enqueued task would be waiting in the
    queue, or counted as processed, or recorded by the handler."""
    assert r.hlen(KEYS.states) == 0
    assert r.llen(KEYS.pending) == 0
    assert r.hget(KEYS.stats, "p") is None
    assert sent == before


# -- FastAPI -------------------------------------------------------------------------


def test_fastapi_signup_answers_202_and_embedded_worker_processes_it(
    aqueue_url: str, r: redis.Redis
) -> None:
    with TestClient(fastapi_app.create_app(aqueue_url)) as http:
        response = http.post("/signup", json=SIGNUP)
        assert response.status_code == 202
        task_id = response.json()["id"]
        assert isinstance(task_id, str)
        assert task_id
        # The app (and its worker) runs in the test client's thread; wait from here.
        anyio.run(wait_until_processed, fastapi_app.sent, r, task_id)


@pytest.mark.parametrize("body", BAD_BODIES)
def test_fastapi_bad_signup_body_gets_422_and_enqueues_nothing(
    aqueue_url: str, r: redis.Redis, body: bytes
) -> None:
    before = dict(fastapi_app.sent)
    with TestClient(fastapi_app.create_app(aqueue_url)) as http:
        response = http.post("/signup", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422
        assert "id" not in response.json()
    assert_nothing_enqueued(r, fastapi_app.sent, before)


def test_fastapi_signup_too_large_to_enqueue_gets_413_and_enqueues_nothing(
    aqueue_url: str, r: redis.Redis
) -> None:
    """A body that validates but is over the Client's 1 MiB payload limit is the
    client's fault, not a server error: 413 with the limit named, not a 500."""
    before = dict(fastapi_app.sent)
    big = {"email": "ada@example.com", "name": "A" * (2 * 1024 * 1024)}
    with TestClient(fastapi_app.create_app(aqueue_url)) as http:
        response = http.post("/signup", json=big)
        assert response.status_code == 413
        assert "over the limit of 1048576 bytes" in response.json()["detail"]
    assert_nothing_enqueued(r, fastapi_app.sent, before)


def test_fastapi_app_with_a_dead_server_fails_at_startup_not_at_creation() -> None:
    app = fastapi_app.create_app(DEAD_URL)  # builds without connecting
    with pytest.raises(aqueue.BrokerUnavailable, match="127.0.0.1:1"), TestClient(app):
        pass


def test_fastapi_mounts_the_dashboard_behind_the_app_s_own_auth(
    aqueue_url: str, r: redis.Redis
) -> None:
    app = fastapi_app.create_app(aqueue_url, admin_password="s3cret")
    admin = ("admin", "s3cret")
    with TestClient(app) as http:
        task_id = http.post("/signup", json=SIGNUP).json()["id"]
        anyio.run(wait_until_processed, fastapi_app.sent, r, task_id)
        for path in ("/admin/queues", "/admin/queues/", "/admin/queues/static/dash.css"):
            assert http.get(path).status_code == 401, path
            assert http.get(path, auth=("admin", "wrong")).status_code == 401, path
        page = http.get("/admin/queues", auth=admin)
        assert page.status_code == 200
        assert page.url.path == "/admin/queues/"
        # The dashboard knows where it is mounted: its links and assets stay under it.
        assert 'href="/admin/queues/queues/default"' in page.text
        assert 'href="/admin/queues/static/dash.css"' in page.text
        assert http.get("/admin/queues/static/dash.css", auth=admin).status_code == 200
        # Actions are on for admins: pausing the queue works, through the mount.
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert token is not None
        forged = http.post("/admin/queues/queues/default/pause", data={"csrf": token[1]})
        assert forged.status_code == 401
        paused = http.post(
            "/admin/queues/queues/default/pause", data={"csrf": token[1]}, auth=admin
        )
        assert paused.status_code == 200
        assert "queue default paused" in paused.text
        assert r.exists(KEYS.paused)


def test_fastapi_dashboard_refuses_everyone_without_an_admin_password(
    aqueue_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    with TestClient(fastapi_app.create_app(aqueue_url)) as http:
        assert http.get("/admin/queues/", auth=("admin", "")).status_code == 401
        assert http.get("/admin/queues/", auth=("admin", "anything")).status_code == 401


# -- aiohttp -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_aiohttp_signup_answers_202_and_embedded_worker_processes_it(
    aqueue_url: str, r: redis.Redis
) -> None:
    async with AiohttpTestClient(TestServer(aiohttp_app.create_app(aqueue_url))) as http:
        response = await http.post("/signup", json=SIGNUP)
        assert response.status == 202
        task_id = (await response.json())["id"]
        assert isinstance(task_id, str)
        assert task_id
        await wait_until_processed(aiohttp_app.sent, r, task_id)


@pytest.mark.anyio
@pytest.mark.parametrize("body", BAD_BODIES)
async def test_aiohttp_bad_signup_body_gets_422_and_enqueues_nothing(
    aqueue_url: str, r: redis.Redis, body: bytes
) -> None:
    before = dict(aiohttp_app.sent)
    async with AiohttpTestClient(TestServer(aiohttp_app.create_app(aqueue_url))) as http:
        response = await http.post(
            "/signup", data=body, headers={"content-type": "application/json"}
        )
        assert response.status == 422
        assert "id" not in await response.json()
    assert_nothing_enqueued(r, aiohttp_app.sent, before)


@pytest.mark.anyio
async def test_aiohttp_signup_too_large_gets_413_and_enqueues_nothing(
    aqueue_url: str, r: redis.Redis
) -> None:
    before = dict(aiohttp_app.sent)
    big = {"email": "ada@example.com", "name": "A" * (2 * 1024 * 1024)}
    data = io.BytesIO(json.dumps(big).encode())
    async with AiohttpTestClient(TestServer(aiohttp_app.create_app(aqueue_url))) as http:
        headers = {"content-type": "application/json"}
        response = await http.post("/signup", data=data, headers=headers)
        assert response.status == 413
    assert_nothing_enqueued(r, aiohttp_app.sent, before)


@pytest.mark.anyio
async def test_aiohttp_app_with_a_dead_server_fails_at_startup_not_at_creation() -> None:
    server = TestServer(aiohttp_app.create_app(DEAD_URL))  # builds without connecting
    with pytest.raises(aqueue.BrokerUnavailable, match="127.0.0.1:1"):
        await server.start_server()
    await server.close()
