"""Small helpers for tests: wait on an outcome with a deadline, read task state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import redis.asyncio as aioredis


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, every: float = 0.005
) -> None:
    """Wait until ``condition()`` is true; fail the test after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(every)


def text(value: bytes | str | None) -> str | None:
    """redis-py types replies as bytes or str; with decode_responses they are str."""
    return value.decode() if isinstance(value, bytes) else value


class Peek:
    """Reads a queue's raw state straight from the server (until the Inspector exists)."""

    def __init__(self, url: str, queue: str = "default") -> None:
        self.r = aioredis.Redis.from_url(url, decode_responses=True)
        self.k = f"aq:{{{queue}}}:"

    async def state(self, task_id: str) -> str | None:
        return text(await self.r.hget(self.k + "states", task_id))

    async def error(self, task_id: str) -> str | None:
        return text(await self.r.hget(self.k + "errors", task_id))

    async def retried(self, task_id: str) -> int:
        return int(text(await self.r.hget(self.k + "retried", task_id)) or 0)

    async def pending(self) -> list[str]:
        """Pending ids, next to run first."""
        ids = await self.r.lrange(self.k + "pending", 0, -1)
        return [str(text(i)) for i in reversed(ids)]

    async def stats(self) -> dict[str, str]:
        return {
            str(text(k)): str(text(v)) for k, v in (await self.r.hgetall(self.k + "stats")).items()
        }

    async def close(self) -> None:
        await self.r.aclose()
