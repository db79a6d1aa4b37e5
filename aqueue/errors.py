"""Every error aqueue raises, under one base class.

Handlers and callers catch ``AqueueError`` to handle anything from this library; the
subclasses say what went wrong and every message names the offending value.
The control exceptions a handler raises on purpose (``SkipRetry``, ``Retry``,
``Revoke``) live here too, because they travel the same path through the worker.
"""

from __future__ import annotations

__all__ = [
    "AqueueError",
    "BrokerUnavailable",
    "DuplicateTask",
    "InvalidCron",
    "InvalidPayload",
    "InvalidQueueName",
    "PayloadTooLarge",
    "QueueNotEmpty",
    "QueueNotFound",
    "ResultTimeout",
    "Retry",
    "Revoke",
    "SkipRetry",
    "TaskFailed",
    "TaskIdConflict",
    "TaskNotFound",
]


class AqueueError(Exception):
    """Base class of every error raised by aqueue."""


class DuplicateTask(AqueueError):
    """Raised when a ``unique`` task is enqueued while an equal task holds the lock."""


class TaskIdConflict(AqueueError):
    """Raised when ``task_id`` names a task that is still live in the queue."""


class TaskNotFound(AqueueError):
    """Raised when a task id is not known in the given queue."""


class QueueNotFound(AqueueError):
    """Raised when a queue name is not known to the server."""


class InvalidPayload(AqueueError):
    """Raised when a payload cannot be encoded, or does not match the handler's type."""


class PayloadTooLarge(InvalidPayload):
    """Raised when an encoded payload is larger than ``Client(max_payload_bytes=...)``."""


class TaskFailed(AqueueError):
    """Raised by ``Client.result`` when the task ended archived; carries its last error."""

    def __init__(self, message: str, *, last_error: str | None = None) -> None:
        super().__init__(message)
        self.last_error = last_error


class InvalidQueueName(AqueueError, ValueError):
    """Raised when a queue name is empty, too long or has characters outside
    ``[A-Za-z0-9_.:-]``."""


class InvalidCron(AqueueError, ValueError):
    """Raised when a cron specification cannot be parsed."""


class ResultTimeout(AqueueError, TimeoutError):
    """Raised when ``Client.result`` gives up waiting for a final state."""


class QueueNotEmpty(AqueueError):
    """Raised when ``delete_queue`` is asked to drop a queue that still holds tasks."""


class BrokerUnavailable(AqueueError, ConnectionError):
    """Raised when the Redis/Valkey server cannot be reached, refuses the credentials,
    or does not speak the protocol, within the caller's timeout."""


class SkipRetry(AqueueError):
    """Raised by a handler to archive its task at once, without further retries."""


class Retry(AqueueError):
    """Raised by a handler to retry its task after ``delay`` seconds (counts as a retry)."""

    def __init__(self, delay: float = 0.0, message: str | None = None) -> None:
        if delay < 0:
            raise ValueError(f"Retry delay must be >= 0 seconds, got {delay!r}")
        super().__init__(message or f"retry requested in {delay:g} s")
        self.delay = float(delay)


class Revoke(AqueueError):
    """Raised by a handler to drop its task: it is deleted, not archived, not retried."""
