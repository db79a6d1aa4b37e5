"""OpenTelemetry tracing: a trace travels from the enqueuing span to the handler's span
through the task's headers, on a real server, recorded by the SDK's in-memory exporter."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import aqueue
from aqueue import Context, Mux, Revoke
from aqueue.testing import drain
from aqueue.tracing import TracingMiddleware, traced_headers

pytestmark = pytest.mark.anyio


def no_delay(retry_count: int, error: BaseException, task: aqueue.TaskInfo) -> float:
    return 0.0


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A provider of our own: the global one can be set once per process only."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def task_spans(exporter: InMemorySpanExporter, task_type: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == f"aqueue.task {task_type}"]


async def test_trace_travels_from_the_enqueuing_span_to_the_handler(
    aqueue_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    mux = Mux()
    mux.use(TracingMiddleware(provider))
    seen: dict[str, trace.SpanContext] = {}
    headers: dict[str, dict[str, str]] = {}

    @mux.task("email:send", queue="mail")
    async def send(ctx: Context, to: str) -> None:
        seen["async"] = trace.get_current_span().get_span_context()
        headers["async"] = ctx.headers

    @mux.task("report")
    def report(ctx: Context) -> None:  # runs in a thread: the span goes with it
        seen["thread"] = trace.get_current_span().get_span_context()

    tracer = provider.get_tracer("test")
    async with aqueue.Client(aqueue_url) as client:
        with tracer.start_as_current_span("signup") as producer:
            info = await client.enqueue(send, "ada@example.com", headers=traced_headers({"x": "1"}))
            await client.enqueue_many([aqueue.Job(report, headers=traced_headers())])
    await drain(mux, aqueue_url, queues=["mail", "default"])

    parent = producer.get_span_context()
    (span,) = task_spans(exporter, "email:send")
    assert span.context.trace_id == parent.trace_id
    assert span.parent is not None and span.parent.span_id == parent.span_id
    assert span.kind is SpanKind.CONSUMER
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "messaging.system": "aqueue",
        "messaging.operation.type": "process",
        "messaging.destination.name": "mail",
        "messaging.message.id": info.id,
        "aqueue.task.type": "email:send",
        "aqueue.task.retry_count": 0,
        "aqueue.task.max_retry": 25,
    }
    # The handler runs inside the span, and the user's headers are kept.
    assert seen["async"] == span.context
    assert headers["async"]["x"] == "1" and "traceparent" in headers["async"]
    (threaded,) = task_spans(exporter, "report")
    assert seen["thread"] == threaded.context
    assert threaded.parent is not None and threaded.parent.span_id == parent.span_id


async def test_failed_attempts_are_errors_and_each_attempt_has_its_span(
    aqueue_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    mux = Mux()
    mux.use(TracingMiddleware(provider))

    @mux.task("flaky", max_retry=1)
    async def flaky(ctx: Context) -> None:
        if ctx.retry_count == 0:
            raise ValueError("first attempt fails")

    @mux.task("hang", timeout=0.2, max_retry=0)
    async def hang(ctx: Context) -> None:
        await anyio.sleep(30)

    @mux.task("revoke")
    async def revoke(ctx: Context) -> None:
        raise Revoke

    tracer = provider.get_tracer("test")
    async with aqueue.Client(aqueue_url) as client:
        with tracer.start_as_current_span("producer") as producer:
            for handler in (flaky, hang, revoke):
                await client.enqueue(handler, headers=traced_headers())
    await drain(mux, aqueue_url, retry_delay=no_delay)

    trace_id = producer.get_span_context().trace_id
    attempts = {
        (s.attributes or {})["aqueue.task.retry_count"]: s for s in task_spans(exporter, "flaky")
    }
    first, second = attempts[0], attempts[1]
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "ValueError: first attempt fails"
    assert [e.name for e in first.events] == ["exception"]
    assert second.status.status_code is StatusCode.UNSET
    assert (second.attributes or {})["aqueue.task.retry_count"] == 1
    # Every attempt belongs to the producer's trace.
    assert {s.context.trace_id for s in (first, second)} == {trace_id}

    (timed_out,) = task_spans(exporter, "hang")
    assert timed_out.status.status_code is StatusCode.ERROR
    assert timed_out.status.description == "the task timed out"
    assert timed_out.end_time is not None and timed_out.start_time is not None
    assert timed_out.end_time - timed_out.start_time >= 190_000_000  # ns: ran its timeout

    (revoked,) = task_spans(exporter, "revoke")
    assert revoked.status.status_code is StatusCode.UNSET
    assert [e.name for e in revoked.events] == ["revoked"]


async def test_task_enqueued_without_trace_context_starts_a_new_trace(
    aqueue_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    mux = Mux()
    mux.use(TracingMiddleware(provider))

    @mux.task("plain")
    async def plain(ctx: Context) -> None:
        pass

    tracer = provider.get_tracer("test")
    async with aqueue.Client(aqueue_url) as client:
        with tracer.start_as_current_span("unrelated"):
            await client.enqueue(plain)  # no traced_headers()
    await drain(mux, aqueue_url)

    (span,) = task_spans(exporter, "plain")
    assert span.parent is None
    (unrelated,) = [s for s in exporter.get_finished_spans() if s.name == "unrelated"]
    assert span.context.trace_id != unrelated.context.trace_id


def test_traced_headers_outside_any_span_is_a_plain_copy() -> None:
    given = {"tenant": "acme"}
    got = traced_headers(given)
    assert got == given and got is not given
    assert traced_headers() == {}


def run_python(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout.strip()


CORE = "aqueue, aqueue.testing, aqueue.server, aqueue._cli.main"


def test_importing_aqueue_loads_neither_opentelemetry_nor_prometheus() -> None:
    # redis-py itself imports the OpenTelemetry SDK when it is installed: count only
    # what aqueue adds on top of its dependencies.
    code = (
        "import sys, redis.asyncio, anyio, msgspec, croniter\n"
        "deps = set(sys.modules)\n"
        f"import {CORE}\n"
        "added = {m.split('.')[0] for m in set(sys.modules) - deps}\n"
        "print(sorted(added & {'opentelemetry', 'prometheus_client'}))"
    )
    assert run_python(code) == "[]"


def test_aqueue_works_without_the_extras_installed() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = sys.modules['prometheus_client'] = None\n"
        f"import {CORE}\n"
        "mux = aqueue.Mux()\n"
        "print(type(aqueue.Worker(mux, 'redis://127.0.0.1:1/0')).__name__)"
    )
    assert run_python(code) == "Worker"


def test_importing_aqueue_tracing_without_the_extra_names_it() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "try:\n    import aqueue.tracing\n"
        "except ImportError as e:\n    print(e)"
    )
    assert "pip install 'aqueue-redis[otel]'" in run_python(code)
