"""The public surface is exactly what SPEC.md names, and nothing drifts silently."""

from __future__ import annotations

import importlib
import inspect

import aqueue
import aqueue.errors

SPEC_NAMES = {
    "Client", "Job", "Mux", "Worker", "Context", "TaskInfo", "QueueInfo", "DailyStats",
    "WorkerInfo", "State", "AqueueError", "DuplicateTask", "TaskIdConflict", "TaskNotFound",
    "QueueNotFound", "InvalidPayload", "PayloadTooLarge", "TaskFailed", "InvalidQueueName",
    "InvalidCron", "ResultTimeout", "QueueNotEmpty", "BrokerUnavailable", "SkipRetry", "Retry",
    "Revoke", "InvalidOption", "Rate", "LimitInfo", "chain", "group", "Flow", "FlowInfo",
    "SyncClient",
}  # fmt: skip


def test_all_lists_exactly_the_public_names() -> None:
    public = {n for n in dir(aqueue) if not n.startswith("_")}
    modules = {n for n in public if inspect.ismodule(getattr(aqueue, n))}
    assert set(aqueue.__all__) - {"__version__"} == public - modules


def test_every_spec_name_is_exported() -> None:
    assert set(aqueue.__all__) >= SPEC_NAMES


def test_every_error_subclasses_the_base_and_says_when_it_is_raised() -> None:
    for name in set(aqueue.errors.__all__) - {"AqueueError"}:
        cls = getattr(aqueue.errors, name)
        assert issubclass(cls, aqueue.AqueueError)
        assert cls.__doc__ and cls.__doc__.startswith("Raised"), name


def test_testing_plugin_module_imports() -> None:
    testing = importlib.import_module("aqueue.testing")
    assert callable(testing.drain)


def test_constructing_client_worker_needs_no_loop_and_does_no_io() -> None:
    # A closed port: any I/O would fail. Construction must not touch it.
    client = aqueue.Client("redis://127.0.0.1:1/0")
    worker = aqueue.Worker(aqueue.Mux(), "redis://127.0.0.1:1/0")
    assert client.broker.url.endswith(":1/0")
    assert worker.queues == {"default": 1.0}
