"""The limit series of ``QueueCollector``: each declared limit's slots taken, its
concurrency and rate limits and the claims it held back, read in the same refresh as the
queues, scraped over HTTP while a worker holds some of the slots on a real server."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

import aqueue
from aqueue import Context, Mux, Worker
from aqueue._redis.keys import queue_keys
from aqueue.metrics import Exporter, QueueCollector

from .helpers import araw_client, wait_for
from .test_metrics import Samples, get, scrape

pytestmark = pytest.mark.anyio

LIMIT_SERIES = (
    "aqueue_limit_running",
    "aqueue_limit_concurrency",
    "aqueue_limit_rate",
    "aqueue_limit_held_back_total",
)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def limits_mux(started: list[str], release: anyio.Event) -> Mux:
    """Queue "bulk" at most 4 at once, its "import" tasks 2; queue "default" 3 starts
    per 1.5 s, its "report" tasks 90 a minute and one at a time per tenant."""
    mux = Mux()
    mux.limit_queue("bulk", concurrency_limit=4)
    mux.limit_queue("default", rate_limit=aqueue.Rate(3, per=1.5))

    @mux.task("report", concurrency_limit=1, rate_limit="90/m", limit_key=lambda t: t)
    async def report(ctx: Context, tenant: str) -> None:
        started.append(tenant)
        await release.wait()

    @mux.task("import", queue="bulk", concurrency_limit=2)
    async def load(ctx: Context, n: int) -> None:
        started.append("bulk")
        await release.wait()

    return mux


def limit_samples(samples: Samples) -> dict[tuple[str, str, str], float]:
    """The limit series, by (name, queue, task_type)."""
    out = {}
    for (name, labels), value in samples.items():
        if name in LIMIT_SERIES:
            by = dict(labels)
            out[(name, by["queue"], by["task_type"])] = value
    return out


async def test_queue_collector_reports_each_limit_with_its_usage(
    url: str, registry: CollectorRegistry
) -> None:
    started: list[str] = []
    release = anyio.Event()
    mux = limits_mux(started, release)
    async with aqueue.Client(url) as client:
        tenants = ("acme", "acme", "initech")
        await client.enqueue_many([aqueue.Job("report", t, limit_key=t) for t in tenants])
        await client.enqueue_many([aqueue.Job("import", n, queue="bulk") for n in range(3)])
    collector = QueueCollector(url, registry=registry)
    async with (
        Worker(mux, url, queues=["default", "bulk"], concurrency=10),
        aqueue.Inspector(url) as inspector,
        collector,
    ):
        # One report per tenant and two imports run; the rest are held back.
        await wait_for(lambda: len(started) == 4)

        async def held_back() -> bool:
            return all(x.held_back for x in await inspector.limits() if x.task_type == "import")

        await wait_for(held_back)
        await collector.refresh()
        with Exporter(registry, port=0) as exporter:
            samples = await scrape(exporter.url)
        release.set()

    series = limit_samples(samples)
    held = {key: series.pop(("aqueue_limit_held_back_total", *key)) for key in (
        ("bulk", ""), ("bulk", "import"), ("default", ""), ("default", "report"),
    )}  # fmt: skip
    assert series == {
        # The queue's own limit (task_type ""): 2 of its 4 slots taken by the imports.
        ("aqueue_limit_running", "bulk", ""): 2,
        ("aqueue_limit_concurrency", "bulk", ""): 4,
        ("aqueue_limit_running", "bulk", "import"): 2,
        ("aqueue_limit_concurrency", "bulk", "import"): 2,
        # A rate limit alone takes no slots: a rate, no running or concurrency series.
        ("aqueue_limit_rate", "default", ""): 2.0,
        # Per key: one slot per tenant, both taken (summed over the keys).
        ("aqueue_limit_running", "default", "report"): 2,
        ("aqueue_limit_concurrency", "default", "report"): 1,
        ("aqueue_limit_rate", "default", "report"): 1.5,
    }
    assert held[("bulk", "import")] >= 1  # the third import waits for a slot
    assert all(n >= 0 for n in held.values())
    # The queue series are there as before.
    assert get(samples, "aqueue_queue_tasks", queue="bulk", state="active") == 2
    assert get(samples, "aqueue_collector_up") == 1


async def test_limit_series_only_for_the_queues_asked_for(
    aqueue_url: str, registry: CollectorRegistry
) -> None:
    async with Worker(limits_mux([], anyio.Event()), aqueue_url, queues=["bulk"]):
        pass  # the worker declared its limits at start
    async with QueueCollector(aqueue_url, queues=["bulk"], registry=registry):
        with Exporter(registry, port=0) as exporter:
            samples = await scrape(exporter.url)
    assert {queue for _, queue, _ in limit_samples(samples)} == {"bulk"}
    held = {"queue": "bulk", "task_type": "import"}
    assert registry.get_sample_value("aqueue_limit_held_back_total", held) == 0


async def test_a_failure_reading_the_limits_keeps_the_queue_metrics(
    aqueue_url: str, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    async with aqueue.Client(aqueue_url) as client:
        await client.enqueue("t", queue="bulk")
    async with Worker(limits_mux([], anyio.Event()), aqueue_url, queues=["other"]):
        pass  # the worker declared its limits at start
    value = registry.get_sample_value
    running = {"queue": "bulk", "task_type": ""}
    limits_key = queue_keys("aq", "bulk").limits
    r = araw_client(aqueue_url)
    try:
        async with QueueCollector(aqueue_url, registry=registry) as collector:
            assert value("aqueue_limit_running", running) == 0
            # The server refuses the limits read (WRONGTYPE); the queues read fine.
            declared: dict[Any, Any] = await r.hgetall(limits_key)
            await r.delete(limits_key)
            await r.set(limits_key, "not a hash")
            with caplog.at_level(logging.WARNING, logger="aqueue.metrics"):
                await collector.refresh()
                await collector.refresh()
            assert value("aqueue_collector_up") == 1
            assert value("aqueue_queue_tasks", {"queue": "bulk", "state": "pending"}) == 1
            assert value("aqueue_limit_running", running) is None  # unknown, not 0
            assert value("aqueue_limit_rate", {"queue": "default", "task_type": ""}) is None
            warnings = [m for m in caplog.messages if "cannot read the limits" in m]
            assert len(warnings) == 1, caplog.messages  # once, not on every refresh
            # Readable again: the limit series come back.
            await r.delete(limits_key)
            await r.hset(limits_key, mapping=declared)
            with caplog.at_level(logging.WARNING, logger="aqueue.metrics"):
                await collector.refresh()
            assert value("aqueue_limit_running", running) == 0
            assert "reading the limits for metrics again" in caplog.messages
    finally:
        await r.aclose()
