"""Prometheus metrics: the per task type middleware, the per queue collector, and the
exporters, scraped over HTTP after known workloads on a real server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import aqueue
from aqueue import Context, Handler, Mux, Retry, Revoke, SkipRetry, Worker
from aqueue.metrics import Exporter, QueueCollector, TaskMetrics, asgi_app
from aqueue.server import EmbeddedServer, free_port
from aqueue.testing import drain

from .helpers import wait_for

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def no_delay(retry_count: int, error: BaseException, task: aqueue.TaskInfo) -> float:
    return 0.0


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient(trust_env=False) as http:
        reply = await http.get(url)
    reply.raise_for_status()
    assert reply.headers["content-type"].startswith("text/plain")
    return parse(reply.text)


def get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def inspector(aqueue_url: str) -> AsyncIterator[aqueue.Inspector]:
    async with aqueue.Inspector(aqueue_url) as inspector:
        yield inspector


# -- TaskMetrics ----------------------------------------------------------------------

# Per task type: enqueued, and then processed, failed, retried, archived, revoked.
WORKLOAD = {
    "ok": (3, 3, 0, 0, 0, 0),
    "ok:thread": (2, 2, 0, 0, 0, 0),
    "flaky": (2, 4, 2, 2, 0, 0),  # fails once, then succeeds
    "doomed": (1, 2, 2, 1, 1, 0),  # max_retry=1, always fails
    "skip": (1, 1, 1, 0, 1, 0),  # SkipRetry archives at once
    "again": (1, 2, 1, 1, 0, 0),  # Retry(0) once, then succeeds
    "revoke": (1, 0, 0, 0, 0, 1),  # Revoke: dropped, not an attempt
    "slow": (1, 2, 1, 1, 0, 0),  # times out once, then succeeds
    "hang": (1, 1, 1, 0, 1, 0),  # max_retry=0, times out
}


def workload_mux(registry: CollectorRegistry) -> tuple[Mux, dict[str, Handler[None, None]]]:
    """The handlers of ``WORKLOAD``; enqueue through them, for their options."""
    mux = Mux()
    mux.use(TaskMetrics(registry))

    @mux.task("ok")
    async def ok(ctx: Context) -> None:
        pass

    @mux.task("ok:thread")
    def ok_thread(ctx: Context) -> None:
        pass

    @mux.task("flaky", max_retry=3)
    async def flaky(ctx: Context) -> None:
        if ctx.retry_count == 0:
            raise ValueError("the first attempt fails")

    @mux.task("doomed", max_retry=1)
    async def doomed(ctx: Context) -> None:
        raise RuntimeError("always fails")

    @mux.task("skip", max_retry=5)
    async def skip(ctx: Context) -> None:
        raise SkipRetry("no point in retrying")

    @mux.task("again", max_retry=5)
    async def again(ctx: Context) -> None:
        if ctx.retry_count == 0:
            raise Retry(0)

    @mux.task("revoke")
    async def revoke(ctx: Context) -> None:
        raise Revoke

    @mux.task("slow", timeout=0.2, max_retry=1)
    async def slow(ctx: Context) -> None:
        if ctx.retry_count == 0:
            await anyio.sleep(30)

    @mux.task("hang", timeout=0.2, max_retry=0)
    async def hang(ctx: Context) -> None:
        await anyio.sleep(30)

    handlers = [ok, ok_thread, flaky, doomed, skip, again, revoke, slow, hang]
    return mux, {h.name: h for h in handlers}


async def test_known_workload_is_counted_exactly_per_task_type(
    aqueue_url: str, registry: CollectorRegistry, inspector: aqueue.Inspector
) -> None:
    mux, handlers = workload_mux(registry)
    ids: dict[str, list[str]] = {}
    async with aqueue.Client(aqueue_url) as client:
        for task_type, (n, *_) in WORKLOAD.items():
            handler = handlers[task_type]
            infos = await client.enqueue_many([aqueue.Job(handler) for _ in range(n)])
            ids[task_type] = [i.id for i in infos]
    await drain(mux, aqueue_url, retry_delay=no_delay)

    with Exporter(registry, port=0) as exporter:
        assert exporter.url == f"http://127.0.0.1:{exporter.port}/metrics"
        samples = await scrape(exporter.url)

    for task_type, (_, processed, failed, retried, archived, revoked) in WORKLOAD.items():
        labels = {"queue": "default", "task_type": task_type}
        got = [
            get(samples, f"aqueue_tasks_{what}_total", **labels)
            for what in ("processed", "failed", "retried", "archived", "revoked")
        ]
        assert got == [processed, failed, retried, archived, revoked], task_type
        attempts = processed + (revoked if task_type == "revoke" else 0)
        assert get(samples, "aqueue_task_duration_seconds_count", **labels) == attempts
        assert get(samples, "aqueue_task_duration_seconds_bucket", le="+Inf", **labels) == (
            attempts
        )
        assert get(samples, "aqueue_tasks_in_flight", **labels) == 0
    # The timed-out attempts ran for their whole timeout.
    hang = {"queue": "default", "task_type": "hang"}
    assert (get(samples, "aqueue_task_duration_seconds_sum", **hang) or 0) >= 0.19
    assert get(samples, "aqueue_task_duration_seconds_bucket", le="0.1", **hang) == 0
    # The cancellation reached the worker: the task failed with a timeout, not acked.
    hung = await inspector.get_task("default", ids["hang"][0])
    assert hung.state == "archived"
    assert (hung.last_error or "").startswith("TimeoutError")
    # The middleware counts what the server's queue statistics count.
    info = await inspector.queue_info("default")
    assert sum(w[1] for w in WORKLOAD.values()) == info.processed_total == 17
    assert sum(w[2] for w in WORKLOAD.values()) == info.failed_total == 8


async def test_errors_that_are_not_failures_are_retried_without_counting_an_attempt(
    aqueue_url: str, registry: CollectorRegistry, inspector: aqueue.Inspector
) -> None:
    def is_failure(exc: BaseException) -> bool:
        return not isinstance(exc, ConnectionError)

    mux = Mux()
    mux.use(TaskMetrics(registry, is_failure=is_failure))

    calls: list[int] = []

    @mux.task("net")
    async def net(ctx: Context) -> None:
        calls.append(ctx.retry_count)
        if len(calls) == 1:
            raise ConnectionError("the remote end is restarting")

    async with aqueue.Client(aqueue_url) as client:
        await client.enqueue(net)
    await drain(mux, aqueue_url, retry_delay=no_delay, is_failure=is_failure)

    labels = {"queue": "default", "task_type": "net"}
    value = registry.get_sample_value
    assert calls == [0, 0]  # the benign error spent no retry
    assert value("aqueue_tasks_processed_total", labels) == 1
    assert value("aqueue_tasks_failed_total", labels) == 0
    assert value("aqueue_tasks_retried_total", labels) == 1
    assert value("aqueue_task_duration_seconds_count", labels) == 2
    info = await inspector.queue_info("default")
    assert (info.processed_total, info.failed_total) == (1, 0)


async def test_in_flight_gauge_counts_running_attempts(
    aqueue_url: str, registry: CollectorRegistry
) -> None:
    mux = Mux()
    mux.use(TaskMetrics(registry))
    release = anyio.Event()

    @mux.task("wait")
    async def wait(ctx: Context) -> None:
        await release.wait()

    labels = {"queue": "default", "task_type": "wait"}

    def value(name: str) -> float | None:
        return registry.get_sample_value(name, labels)

    async with aqueue.Client(aqueue_url) as client:
        await client.enqueue_many([aqueue.Job(wait), aqueue.Job(wait)])
    async with Worker(mux, aqueue_url, concurrency=4):
        await wait_for(lambda: value("aqueue_tasks_in_flight") == 2)
        assert value("aqueue_tasks_processed_total") == 0
        release.set()
        await wait_for(lambda: value("aqueue_tasks_processed_total") == 2)
        assert value("aqueue_tasks_in_flight") == 0


async def test_attempt_interrupted_by_shutdown_is_not_counted_and_goes_back(
    aqueue_url: str, registry: CollectorRegistry, inspector: aqueue.Inspector
) -> None:
    mux = Mux()
    mux.use(TaskMetrics(registry))
    started = anyio.Event()

    @mux.task("forever")
    async def forever(ctx: Context) -> None:
        started.set()
        await anyio.sleep_forever()

    async with aqueue.Client(aqueue_url) as client:
        info = await client.enqueue(forever)
    async with Worker(mux, aqueue_url, shutdown_timeout=0.05):
        with anyio.fail_after(10):
            await started.wait()
    labels = {"queue": "default", "task_type": "forever"}
    for name in (
        "aqueue_tasks_processed_total",
        "aqueue_tasks_failed_total",
        "aqueue_tasks_in_flight",
        "aqueue_task_duration_seconds_count",
    ):
        assert registry.get_sample_value(name, labels) == 0, name
    # The cancellation went through to the worker, which put the task back.
    back = await inspector.get_task("default", info.id)
    assert (back.state, back.retried) == ("pending", 0)


async def test_two_task_metrics_on_one_registry_are_refused(registry: CollectorRegistry) -> None:
    TaskMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        TaskMetrics(registry)


# -- QueueCollector -------------------------------------------------------------------


async def test_queue_collector_reports_sizes_latency_and_server_totals(
    url: str, registry: CollectorRegistry
) -> None:
    mux = Mux()

    @mux.task("fine", queue="work")
    async def fine(ctx: Context) -> None:
        pass

    @mux.task("bad", queue="work")
    async def bad(ctx: Context) -> None:
        raise SkipRetry("bad")

    collector = QueueCollector(url, registry=registry)
    async with aqueue.Client(url) as client:
        await client.enqueue_many([aqueue.Job("idle", queue="waiting") for _ in range(3)])
        await client.enqueue_many(
            [aqueue.Job("later", queue="waiting", process_in=3600) for _ in range(2)]
        )
        await client.enqueue_many([aqueue.Job(fine), aqueue.Job(fine), aqueue.Job(bad)])
    async with collector:
        before = time.time()
        await drain(mux, url, queues=["work"])
        async with aqueue.Inspector(url) as inspector:
            await inspector.pause("waiting")
        await collector.refresh()
        with Exporter(registry, port=0) as exporter:
            samples = await scrape(exporter.url)

    sizes = {
        (q, state): get(samples, "aqueue_queue_tasks", queue=q, state=state)
        for q in ("waiting", "work")
        for state in ("pending", "active", "scheduled", "retry", "archived", "completed")
    }
    assert sizes == {
        ("waiting", "pending"): 3, ("waiting", "scheduled"): 2, ("waiting", "active"): 0,
        ("waiting", "retry"): 0, ("waiting", "archived"): 0, ("waiting", "completed"): 0,
        ("work", "pending"): 0, ("work", "scheduled"): 0, ("work", "active"): 0,
        ("work", "retry"): 0, ("work", "archived"): 1, ("work", "completed"): 0,
    }  # fmt: skip
    assert get(samples, "aqueue_queue_processed_total", queue="work") == 3
    assert get(samples, "aqueue_queue_failed_total", queue="work") == 1
    assert get(samples, "aqueue_queue_processed_total", queue="waiting") == 0
    assert get(samples, "aqueue_queue_paused", queue="waiting") == 1
    assert get(samples, "aqueue_queue_paused", queue="work") == 0
    assert (get(samples, "aqueue_queue_memory_bytes", queue="waiting") or 0) > 0
    assert 0 < (get(samples, "aqueue_queue_latency_seconds", queue="waiting") or 0) < 60
    assert get(samples, "aqueue_queue_latency_seconds", queue="work") == 0
    assert get(samples, "aqueue_collector_up") == 1
    refreshed = get(samples, "aqueue_collector_last_refresh_timestamp_seconds") or 0
    assert before <= refreshed <= time.time()


async def test_queue_collector_reports_a_down_server_and_recovers(
    registry: CollectorRegistry,
) -> None:
    with EmbeddedServer() as server:
        async with aqueue.Client(server.url) as client:
            await client.enqueue("t", queue="q1")
        collector = QueueCollector(
            server.url, queues=["q1", "unused"], registry=registry, timeout=1
        )
        value = registry.get_sample_value
        pending = {"queue": "q1", "state": "pending"}
        async with collector:
            assert value("aqueue_collector_up") == 1
            assert value("aqueue_queue_tasks", pending) == 1
            # A queue asked for by name that has seen no task yet holds nothing.
            assert value("aqueue_queue_tasks", {"queue": "unused", "state": "pending"}) == 0
            server.stop()
            await collector.refresh()
            assert value("aqueue_collector_up") == 0
            assert value("aqueue_queue_tasks", pending) is None  # unknown, not 0
            server.start()
            await collector.refresh()
            # The server kept nothing (no persistence): the queue is empty now.
            assert value("aqueue_collector_up") == 1
            assert value("aqueue_queue_tasks", pending) == 0


# -- exposition -----------------------------------------------------------------------


async def test_asgi_app_serves_the_registry(registry: CollectorRegistry) -> None:
    metrics = TaskMetrics(registry)
    ctx = Context(
        task_id="1", task_type="t", queue="q", retry_count=0, max_retry=0, deadline=None,
        enqueued_at=None, headers={},
    )  # fmt: skip

    async def handler() -> None:
        pass

    await metrics(ctx, handler)
    transport = httpx.ASGITransport(app=asgi_app(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        reply = await http.get("/")
    assert reply.status_code == 200
    samples = parse(reply.text)
    assert get(samples, "aqueue_tasks_processed_total", queue="q", task_type="t") == 1


async def test_exporter_refuses_a_port_in_use(registry: CollectorRegistry) -> None:
    with Exporter(registry, port=0) as first:
        with pytest.raises(
            aqueue.AqueueError, match=f"cannot serve metrics on 127.0.0.1:{first.port}"
        ):
            Exporter(registry, port=first.port).start()
        assert (await scrape(first.url)) is not None


async def test_serve_exports_queue_gauges_until_sigterm(aqueue_url: str, tmp_path: Path) -> None:
    """``aqueue.metrics.serve``, as ``aqueue metrics --port`` runs it, in a child process."""
    async with aqueue.Client(aqueue_url) as client:
        await client.enqueue("t", queue="q1")
        await client.enqueue("t", queue="q1")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    code = f"import aqueue.metrics as m; m.serve({aqueue_url!r}, {port}, interval=0.05)"
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        proc = await anyio.open_process(
            [sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.DEVNULL, stderr=err
        )

    async def pending_is(n: int) -> bool:
        try:
            samples = await scrape(url)
        except httpx.TransportError:
            assert proc.returncode is None, log.read_text()
            return False  # not listening yet
        return get(samples, "aqueue_queue_tasks", queue="q1", state="pending") == n

    try:
        await wait_for(lambda: pending_is(2), timeout=20)
        # Refreshed in the background: a new task shows up without a restart.
        async with aqueue.Client(aqueue_url) as client:
            await client.enqueue("t", queue="q1")
        await wait_for(lambda: pending_is(3))
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            assert await proc.wait() == 0, log.read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.aclose()


def test_importing_aqueue_metrics_without_the_extra_names_it() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "try:\n    import aqueue.metrics\n"
        "except ImportError as e:\n    print(e)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'aqueue-redis[prometheus]'" in out.stdout
