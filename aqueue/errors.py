"""Every error aqueue raises, under one base class.

Handlers and callers catch ``AqueueError`` to handle anything from this library; the
subclasses say what went wrong and every message names the offending value. Callers
tell errors apart by class and attributes, never by parsing a message. The control
exceptions a handler raises on purpose (``SkipRetry``, ``Retry``, ``Revoke``) live here
too, because they travel the same path through the worker.

The hierarchy::

    AqueueError
    ├── InvalidOption (ValueError)      a bad option or argument value
    ├── InvalidQueueName (ValueError)
    ├── InvalidCron (ValueError)
    ├── InvalidPayload
    │   └── PayloadTooLarge
    ├── DuplicateTask                   a unique lock is held
    ├── TaskIdConflict
    ├── TaskNotFound
    ├── QueueNotFound
    ├── QueueNotEmpty                   .queue, .count
    ├── StateRefused                    .state, .allowed
    ├── TaskFailed                      .last_error
    ├── ResultTimeout (TimeoutError)
    ├── BrokerUnavailable (ConnectionError)
    ├── UnsupportedServer               the server lacks what aqueue needs
    ├── SkipRetry                       control: archive now
    ├── Retry                           control: retry after .delay
    └── Revoke                          control: drop the task

A few errors of the library's own life (a ``Worker`` or exporter started twice, a
missing optional extra) are plain ``AqueueError``.
"""

from __future__ import annotations

__all__ = [
    "AqueueError",
    "BrokerUnavailable",
    "DuplicateTask",
    "InvalidCron",
    "InvalidOption",
    "InvalidPayload",
    "InvalidQueueName",
    "PayloadTooLarge",
    "QueueNotEmpty",
    "QueueNotFound",
    "ResultTimeout",
    "Retry",
    "Revoke",
    "SkipRetry",
    "StateRefused",
    "TaskFailed",
    "TaskIdConflict",
    "TaskNotFound",
    "UnsupportedServer",
]


class AqueueError(Exception):
    """Base class of every error raised by aqueue."""


class InvalidOption(AqueueError, ValueError):
    """Raised when an option or argument has a bad value (a negative timeout, a naive
    datetime, an unknown option name, a handler of the wrong shape, ...); nothing is
    written."""


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
    """Raised when ``delete_queue`` is asked to drop a queue that still holds tasks;
    ``queue`` names it and ``count`` says how many tasks it holds."""

    def __init__(self, message: str, *, queue: str | None = None, count: int | None = None) -> None:
        super().__init__(message)
        self.queue = queue
        self.count = count


class StateRefused(AqueueError):
    """Raised when a task's state does not allow the change asked for (running an
    active task, archiving a completed one, ...); ``state`` is the state found and
    ``allowed`` the states that would have allowed it."""

    def __init__(self, message: str, *, state: str, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.state = state
        self.allowed = allowed


class BrokerUnavailable(AqueueError, ConnectionError):
    """Raised when the Redis/Valkey server cannot be reached, refuses the credentials,
    or does not speak the protocol, within the caller's timeout."""


class UnsupportedServer(AqueueError):
    """Raised when the server lacks something aqueue needs, which waiting will not bring:
    too old a version, a command it does not have or has disabled."""


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
