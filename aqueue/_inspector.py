"""Reading and repairing queues: ``Inspector``.

This module holds what the engine needs today (``queues``, ``get_task``, ``cancel``);
the rest of the operator's toolbox (queue_info, list_tasks, bulk moves, workers, ...)
grows here.
"""

from __future__ import annotations

import time
from types import TracebackType

import redis.asyncio as aioredis

from ._broker import DEFAULT_PREFIX, DEFAULT_URL, SCRIPTS, Broker
from ._codec import decode_message, decode_value
from ._keys import cancel_channel, queue_keys, queues_key
from ._task import TaskInfo, check_queue_name, from_ms
from .errors import TaskNotFound


async def cancel_task(broker: Broker, queue: str, task_id: str) -> str:
    """Cancel one task; return the state it was in. See cancel.lua."""
    check_queue_name(queue)
    k = queue_keys(broker.prefix, queue)
    keys = (
        k.states, k.pending, k.scheduled, k.retry, k.archived, k.errors, k.failed_at,
        k.uniq, k.uniq_exp, k.tasks, k.cancels,
    )  # fmt: skip
    now = int(time.time() * 1000)
    state = await broker.run(lambda: broker.script(SCRIPTS.cancel, keys, [now, task_id]))
    if state is None:
        raise TaskNotFound(f"no task {task_id!r} in queue {queue!r}")
    text = state.decode()
    if text == "active":
        # Wake the worker now; if it misses this, it finds the request at its next
        # heartbeat, or the reaper archives the task if the worker is gone.
        message = f"{queue}|{task_id}"
        await broker.run(lambda: broker.redis.publish(cancel_channel(broker.prefix), message))
    return str(text)


class Inspector:
    """Looks into queues and repairs them. Connects lazily; usable without ``async with``."""

    def __init__(
        self,
        url_or_redis: str | aioredis.Redis = DEFAULT_URL,
        *,
        timeout: float = 5.0,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self._broker = Broker(url_or_redis, timeout=timeout, prefix=prefix)

    @property
    def broker(self) -> Broker:
        return self._broker

    async def queues(self) -> list[str]:
        """Names of every queue a client or worker has used, sorted."""
        b = self._broker
        names = await b.run(lambda: b.redis.smembers(queues_key(b.prefix)))
        return sorted(n.decode() if isinstance(n, bytes) else n for n in names)

    async def get_task(self, queue: str, task_id: str) -> TaskInfo:
        """The task as stored now; ``TaskNotFound`` if there is no such task."""
        check_queue_name(queue)
        b = self._broker
        k = queue_keys(b.prefix, queue)

        async def read() -> list[object]:
            pipe = b.redis.pipeline(transaction=False)
            for h in (k.states, k.tasks, k.retried, k.errors, k.failed_at, k.results, k.progress):
                pipe.hget(h, task_id)
            for z in (k.scheduled, k.retry, k.completed):
                pipe.zscore(z, task_id)
            return list(await pipe.execute())

        (
            state,
            message,
            retried,
            error,
            failed_at,
            result,
            progress,
            sched,
            retry,
            done,
        ) = await b.run(read)
        if state is None or message is None:
            raise TaskNotFound(f"no task {task_id!r} in queue {queue!r}")
        assert isinstance(state, bytes) and isinstance(message, bytes)
        max_retry, _, body = decode_message(message)
        text = state.decode()
        due = sched if text == "scheduled" else retry if text == "retry" else None
        completed_at = None
        if text == "completed" and isinstance(done, float):
            completed_at = from_ms(int(done - body.retention * 1000))
        return TaskInfo(
            id=task_id,
            queue=queue,
            type=body.type,
            payload=decode_value(body.payload),
            state="active" if text.startswith("@") else text,
            max_retry=max_retry,
            retried=int(retried) if isinstance(retried, bytes) else 0,
            last_error=error.decode() if isinstance(error, bytes) else None,
            last_failed_at=from_ms(int(failed_at)) if isinstance(failed_at, bytes) else None,
            timeout=body.timeout or None,
            deadline=from_ms(body.deadline),
            next_process_at=from_ms(int(due)) if isinstance(due, float) else None,
            completed_at=completed_at,
            result=decode_value(result) if isinstance(result, bytes) else None,
            enqueued_at=from_ms(body.enqueued_at),
            retention=body.retention,
            headers=body.headers or {},
            progress=decode_value(progress) if isinstance(progress, bytes) else None,
        )

    async def cancel(self, queue: str, task_id: str) -> None:
        """Cancel a task: a waiting one is archived without running; a running one has
        its handler cancelled and is archived as cancelled, never retried. A task that
        already completed or was archived is left as it is."""
        await cancel_task(self._broker, queue, task_id)

    async def close(self) -> None:
        await self._broker.close()

    async def __aenter__(self) -> Inspector:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
