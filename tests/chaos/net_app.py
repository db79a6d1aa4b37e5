"""The worker app of the network chaos tests: ``aqueue worker tests.chaos.net_app:worker``.

Its one handler proves a run happened by counting it in the server named in the payload:
``HINCRBY net:done <task id> 1`` once its work (a short sleep) is done. A count of at
least 1 for every enqueued id means nothing was lost; a count above 1 is a re-run,
which at-least-once delivery allows. When that server cannot be reached the handler
fails, and the task is retried almost at once (``retry_delay``), so an outage does not
stretch a test by the default retry delays.

``worker`` is the CLI target: its lease is short so that a cut longer than a couple of
seconds makes it lapse, which exercises the heartbeat's cancellation, the reaper and the
lease audit. The URL is a placeholder: the tests always pass ``--url``.
"""

from __future__ import annotations

import anyio
import msgspec
import redis.asyncio as aioredis

import aqueue

DONE_KEY = "net:done"
LEASE_TTL = 2.0
SERVER_TIMEOUT = 1.0


class Work(msgspec.Struct):
    url: str
    ms: float = 5.0


mux = aqueue.Mux()

_recorders: dict[str, aioredis.Redis] = {}


def _recorder(url: str) -> aioredis.Redis:
    r = _recorders.get(url)
    if r is None:
        r = _recorders[url] = aioredis.Redis.from_url(
            url, socket_timeout=SERVER_TIMEOUT, socket_connect_timeout=SERVER_TIMEOUT
        )
    return r


@mux.task("net:work")
async def work(ctx: aqueue.Context, w: Work) -> None:
    await anyio.sleep(w.ms / 1000)
    await _recorder(w.url).hincrby(DONE_KEY, ctx.task_id, 1)


def retry_soon(retries: int, exc: BaseException, task: aqueue.TaskInfo) -> float:
    return 0.05


worker = aqueue.Worker(
    mux,
    "redis://127.0.0.1:1/0",
    concurrency=8,
    lease_ttl=LEASE_TTL,
    timeout=SERVER_TIMEOUT,
    shutdown_timeout=5,
    retry_delay=retry_soon,
)

# The same with a longer lease, for a test that needs room between the ack writer's
# retries and the lease's end.
worker_long_lease = worker.replace(lease_ttl=3.0)
