"""The whole stack against the peers (issue 17): ``web_signup``.

The signup app (``benchmarks/signup_app.py``: FastAPI under uvicorn, one process, on the
default asyncio loop) enqueues one ``welcome(email, plan)`` job per ``POST /signup``
through each system's adapter, in the system's web environment (``envs``), where the
app's stack is the same for every system. ``make bench``'s driver loads it
(``benchmarks/web.py``: wrk when installed, 50 connections, a warm-up second, then 5 s
at scale 1); the figure is requests per second, with the requests' p50 and p99 and
the app process's CPU time per request (``cpu_us``: less noisy than the rate on a
shared machine, where the app gets the share of a core the other tenants leave it).

aqueue's figure also carries the ceiling, measured just before it: the same app in
aqueue's web environment without the enqueue (``alone_rps``, ``alone_cpu_us``). No
enqueue can make an app faster than that, so it bounds what any system's ratio to
another can be.
"""

from __future__ import annotations

from collections.abc import Callable

from ..web import CONNECTIONS, SECONDS, DriverRun, WrkRun, app_under_load, driver_name
from .harness import ChildFailed, Run, System
from .report import AQUEUE, Figure


async def web_signup(run: Run, s: System, _: int) -> Figure:
    python = s.web_python
    if python is None:
        raise ChildFailed(f"{s.name} has no web environment: {s.web_error or 'not made'}")
    seconds = max(1, round(SECONDS * run.bench.scale))

    def app(system: str) -> Callable[[int], list[str]]:
        return lambda port: [python, "-m", "benchmarks.peers.webapp", system, str(port), run.url]

    extra: dict[str, float] = {}
    if s.name == AQUEUE:
        alone = await app_under_load("none", app("none"), seconds)
        extra |= {"alone_rps": alone.rate, **_cpu(alone, "alone_cpu_us")}
        await run.bench.flush()
    result = await app_under_load(s.name, app(s.name), seconds)
    extra |= {"req_p50_ms": result.p50, "req_p99_ms": result.p99, **_cpu(result, "cpu_us")}
    return Figure(s.name, "web_signup", CONNECTIONS, result.rate, extra, note=driver_name())


def _cpu(result: WrkRun | DriverRun, key: str) -> dict[str, float]:
    """The app's CPU time per request, in µs, if it could be read."""
    if not (result.cpu_seconds and result.requests):
        return {}
    return {key: result.cpu_seconds / result.requests * 1e6}
