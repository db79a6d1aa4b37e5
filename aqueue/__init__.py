"""aqueue: asyncio-native background jobs on Redis and Valkey.

The public API is exactly what ``__all__`` lists; everything in ``_``-prefixed
modules is internal and may change.
"""

from ._client import Client, Job
from ._cron import CronEntry, CronRun
from ._flow import Flow, FlowInfo, chain, group
from ._inspector import Inspector
from ._limits import LimitInfo, Rate
from ._mux import Context, Handler, Mux
from ._sync import SyncClient
from ._task import DailyStats, QueueInfo, State, TaskInfo, WorkerInfo
from ._version import __version__
from ._worker.worker import Worker
from .errors import (
    AqueueError,
    BrokerUnavailable,
    DuplicateTask,
    InvalidCron,
    InvalidOption,
    InvalidPayload,
    InvalidQueueName,
    PayloadTooLarge,
    QueueNotEmpty,
    QueueNotFound,
    ResultTimeout,
    Retry,
    Revoke,
    SkipRetry,
    StateRefused,
    TaskFailed,
    TaskIdConflict,
    TaskNotFound,
    UnsupportedServer,
)

__all__ = [
    "AqueueError",
    "BrokerUnavailable",
    "Client",
    "Context",
    "CronEntry",
    "CronRun",
    "DailyStats",
    "DuplicateTask",
    "Flow",
    "FlowInfo",
    "Handler",
    "Inspector",
    "InvalidCron",
    "InvalidOption",
    "InvalidPayload",
    "InvalidQueueName",
    "Job",
    "LimitInfo",
    "Mux",
    "PayloadTooLarge",
    "QueueInfo",
    "QueueNotEmpty",
    "QueueNotFound",
    "Rate",
    "ResultTimeout",
    "Retry",
    "Revoke",
    "SkipRetry",
    "State",
    "StateRefused",
    "SyncClient",
    "TaskFailed",
    "TaskIdConflict",
    "TaskInfo",
    "TaskNotFound",
    "UnsupportedServer",
    "Worker",
    "WorkerInfo",
    "__version__",
    "chain",
    "group",
]
