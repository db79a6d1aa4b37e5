"""Shared fixtures: real servers only.

``url`` is parametrized over every server kind reachable here: an embedded Valkey 9
(always) and the machine's Redis 7 at 127.0.0.1:6379 when it answers (database 13, or
``AQUEUE_TEST_REDIS_DB`` so that two runs on one machine do not flush each other's data;
flushed before and after each test). Tests that must run on both use ``url``; the
rest use the plugin's ``aqueue_url`` (Valkey only).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

REDIS7_URL = f"redis://127.0.0.1:6379/{int(os.environ.get('AQUEUE_TEST_REDIS_DB', '13'))}"


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


@pytest.fixture(params=["valkey9", "redis7"])
def url(request: pytest.FixtureRequest, aqueue_server_url: str) -> Iterator[str]:
    """A real, empty server of each kind reachable on this machine."""
    if request.param == "valkey9":
        target = aqueue_server_url
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
