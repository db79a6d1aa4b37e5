"""Shared fixtures: real servers only.

``url`` is parametrized over every server kind reachable here: an embedded Valkey 9
(always); the machine's Redis 7 at 127.0.0.1:6379 when it answers (database 13, or
``AQUEUE_TEST_REDIS_DB`` so that two runs on one machine do not flush each other's
data); and a 3-master Valkey Cluster (``redis+cluster://``), formed once per session.
Each is flushed before and after each test. Tests that must run on all of them use
``url``; the rest use the plugin's ``aqueue_url`` (Valkey only). Read or write a
server's keys directly with ``tests.helpers.raw_client`` / ``araw_client``, which
work on each kind. A test that cannot hold on a cluster (none so far) skips itself
there with ``pytest.skip("single server only: <why>")`` when
``tests.helpers.is_cluster(url)``: every exclusion gives its reason, and a grep for
"single server only" finds them all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import anyio
import pytest
import redis

from aqueue.server import EmbeddedServer

from .clusters import Cluster
from .helpers import LOCKED_PASSWORD, wait_for

REDIS7_URL = f"redis://127.0.0.1:6379/{int(os.environ.get('AQUEUE_TEST_REDIS_DB', '13'))}"
# Forming a cluster takes about 2 s; much longer means something is wrong.
CLUSTER_FORM_TIMEOUT = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _redis7_available() -> bool:
    try:
        client = redis.Redis.from_url(REDIS7_URL, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """One 3-master Valkey Cluster for the whole session (started only if a test asks)."""
    c = Cluster()
    try:
        anyio.run(wait_for, c.ok, CLUSTER_FORM_TIMEOUT, 0.05)  # cluster_state:ok everywhere
        yield c
    finally:
        c.close()


@pytest.fixture(params=["valkey9", "redis7", "cluster"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A real, empty server of each kind reachable on this machine."""
    if request.param == "cluster":
        c: Cluster = request.getfixturevalue("cluster")
        c.flush()
        try:
            yield c.url
        finally:
            c.flush()
        return
    if request.param == "valkey9":
        target: str = request.getfixturevalue("aqueue_server_url")
    elif _redis7_available():
        target = REDIS7_URL
    else:
        pytest.skip("no Redis at 127.0.0.1:6379")
    client = redis.Redis.from_url(target)
    client.flushdb()
    try:
        yield target
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="module")
def locked_server() -> Iterator[EmbeddedServer]:
    """A Valkey server that requires the password ``LOCKED_PASSWORD``."""
    # Set after start: EmbeddedServer's readiness probe is an unauthenticated PING.
    with EmbeddedServer() as server:
        r = redis.Redis(port=server.port)
        try:
            r.config_set("requirepass", LOCKED_PASSWORD)
        finally:
            r.close()
        yield server
