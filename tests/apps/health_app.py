"""An app for the health probe tests: ``aqueue worker tests.apps.health_app:mux``.

``health:block`` is an async handler that makes the mistake the liveness probe exists
for: a synchronous ``time.sleep`` that blocks the worker's event loop for ``seconds``.
"""

from __future__ import annotations

import time

import aqueue

mux = aqueue.Mux()


@mux.task("health:block", max_retry=0)
async def block(ctx: aqueue.Context, seconds: float) -> None:
    time.sleep(seconds)  # noqa: ASYNC251 - blocking the loop is the point
