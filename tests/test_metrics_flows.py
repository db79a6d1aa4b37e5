"""``aqueue_flows_total{state}`` from ``QueueCollector``: the server's workflow counters
(started, and ended completed, failed or cancelled), read in the same refresh as the
queues, scraped over HTTP from a real server; a failure to read them leaves the other
series as they are."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import aqueue
from aqueue import Job, Worker
from aqueue._redis.keys import flow_stats_key
from aqueue.metrics import Exporter, QueueCollector

from .helpers import araw_client
from .test_cli_flows import flow_mux, make_flows, two_adds
from .test_metrics import get, scrape

pytestmark = pytest.mark.anyio

STATES = ("started", "completed", "failed", "cancelled")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def flow_counts(registry: CollectorRegistry) -> dict[str, float | None]:
    return {s: registry.get_sample_value("aqueue_flows_total", {"state": s}) for s in STATES}


async def stored_counts(url: str) -> dict[str, float]:
    """The server's flow counters, read directly."""
    r = araw_client(url, decode_responses=True)
    try:
        stored = await r.hgetall(flow_stats_key("aq"))
    finally:
        await r.aclose()
    return {s: float(stored.get(s, 0)) for s in STATES}


async def test_queue_collector_counts_flows_started_and_ended_per_state(
    url: str, registry: CollectorRegistry
) -> None:
    await make_flows(url)  # one failed, one completed, one pending
    async with aqueue.Client(url) as client, aqueue.Inspector(url) as inspector:
        await client.enqueue_flow(two_adds(), flow_id="f-gone")
        await inspector.cancel_flow("f-gone")
    async with QueueCollector(url, registry=registry):
        with Exporter(registry, port=0) as exporter:
            samples = await scrape(exporter.url)
    exported = {s: get(samples, "aqueue_flows_total", state=s) for s in STATES}
    assert exported == await stored_counts(url)
    assert exported["started"] == 4
    # (Exact counts of ends after the server forgot its scripts: the test below.)
    assert all(exported[s] for s in ("completed", "failed", "cancelled"))
    # The queue series are there as before.
    assert get(samples, "aqueue_queue_tasks", queue="default", state="pending") == 1
    assert get(samples, "aqueue_collector_up") == 1


async def test_flow_series_are_zero_before_any_flow_whatever_the_queues(
    aqueue_url: str, registry: CollectorRegistry
) -> None:
    async with QueueCollector(aqueue_url, queues=["bulk"], registry=registry):
        assert flow_counts(registry) == dict.fromkeys(STATES, 0.0)


async def test_a_failure_reading_the_flow_counters_keeps_the_other_series(
    aqueue_url: str, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    await make_flows(aqueue_url)
    value = registry.get_sample_value
    key = flow_stats_key("aq")
    r = araw_client(aqueue_url)
    try:
        async with QueueCollector(aqueue_url, registry=registry) as collector:
            assert flow_counts(registry)["started"] == 3
            # The server refuses the counters' read (WRONGTYPE); the queues read fine.
            counts: dict[Any, Any] = await r.hgetall(key)
            await r.delete(key)
            await r.set(key, "not a hash")
            with caplog.at_level(logging.WARNING, logger="aqueue.metrics"):
                await collector.refresh()
                await collector.refresh()
            assert value("aqueue_collector_up") == 1
            assert value("aqueue_queue_tasks", {"queue": "default", "state": "pending"}) == 1
            assert flow_counts(registry) == dict.fromkeys(STATES)  # unknown, not 0
            warnings = [m for m in caplog.messages if "cannot read the flow counters" in m]
            assert len(warnings) == 1, caplog.messages  # once, not on every refresh
            # Readable again: the series come back.
            await r.delete(key)
            await r.hset(key, mapping=counts)
            with caplog.at_level(logging.WARNING, logger="aqueue.metrics"):
                await collector.refresh()
            assert flow_counts(registry) == {
                "started": 3, "completed": 1, "failed": 1, "cancelled": 0,
            }  # fmt: skip
            assert "reading the flow counters for metrics again" in caplog.messages
    finally:
        await r.aclose()


async def test_each_flow_end_is_counted_once_after_the_server_forgot_its_scripts(
    aqueue_url: str,
) -> None:
    r = araw_client(aqueue_url)
    try:
        async with aqueue.Client(aqueue_url) as client, Worker(flow_mux(), aqueue_url):
            await r.script_flush()
            # One step: its end is the first use of the scripts that record it.
            info = await client.enqueue_flow(aqueue.chain(Job("add", 1)))
            assert await client.result(info, timeout=20) == 2
    finally:
        await r.aclose()
    assert await stored_counts(aqueue_url) == {
        "started": 1, "completed": 1, "failed": 0, "cancelled": 0,
    }  # fmt: skip
