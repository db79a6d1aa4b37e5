"""A loopback TCP proxy between one worker slot and the server, which the fault schedule
turns bad in three ways:

* ``cut()``: every relayed connection is closed and new ones are closed at once, until
  ``heal()`` (a path that broke and came back: the client sees resets at once);
* ``stall()``: nothing is relayed either way and nothing is closed, until ``heal()``
  (a partition: packets vanish, the client's requests and the server's replies arrive
  late, all at once, or never if the client gives up first);
* ``slow(delay, jitter)``: every chunk is delivered ``delay`` ± ``jitter`` seconds after it
  was read, in order, until ``heal()`` (a slow, far link).

The kernel here has no netem (see tests/chaos/netns.py for the packet-level tests); this
proxy gives the soak the same three faults at the stream level for every worker at once.
"""

from __future__ import annotations

import math
import random
import time

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream


class FaultProxy:
    def __init__(self, target_port: int, rng: random.Random) -> None:
        self.target_port = target_port
        self.port = 0
        self._rng = rng
        self._cut = False
        self._flowing = anyio.Event()
        self._flowing.set()
        self._delay = 0.0
        self._jitter = 0.0
        self._links: set[anyio.CancelScope] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on a free loopback port until cancelled (use ``task_group.start``)."""
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        async with listener:
            self.port = listener.extra(SocketAttribute.local_port)
            task_status.started()
            await listener.serve(self._relay)

    def cut(self) -> None:
        self._cut = True
        for scope in list(self._links):
            scope.cancel()

    def stall(self) -> None:
        if self._flowing.is_set():
            self._flowing = anyio.Event()

    def slow(self, delay: float, jitter: float) -> None:
        self._delay, self._jitter = delay, jitter

    def heal(self) -> None:
        self._cut = False
        self._delay = self._jitter = 0.0
        self._flowing.set()

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            await self._flowing.wait()  # a stalled path does not even connect
            if self._cut:
                return
            try:
                upstream = await anyio.connect_tcp("127.0.0.1", self.target_port)
            except OSError:
                return  # the server is down: the client sees its connection closed
            async with upstream, anyio.create_task_group() as tg:
                if self._cut:
                    return
                self._links.add(tg.cancel_scope)
                for src, dst in ((client, upstream), (upstream, client)):
                    send, receive = anyio.create_memory_object_stream[tuple[float, bytes]](math.inf)
                    tg.start_soon(self._read, src, send, tg.cancel_scope)
                    tg.start_soon(self._write, receive, dst, tg.cancel_scope)
            self._links.discard(tg.cancel_scope)

    async def _read(
        self,
        src: anyio.abc.SocketStream,
        out: MemoryObjectSendStream[tuple[float, bytes]],
        link: anyio.CancelScope,
    ) -> None:
        """Stamp each chunk with when it may be delivered."""
        try:
            async with out:
                async for chunk in src:
                    lag = self._delay + self._rng.uniform(-self._jitter, self._jitter)
                    await out.send((time.monotonic() + max(0.0, lag), chunk))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            link.cancel()

    async def _write(
        self,
        chunks: MemoryObjectReceiveStream[tuple[float, bytes]],
        dst: anyio.abc.SocketStream,
        link: anyio.CancelScope,
    ) -> None:
        """Deliver in order, each chunk at its time and only while the path flows."""
        last = 0.0
        try:
            async with chunks:
                async for due, chunk in chunks:
                    due = max(due, last)  # jitter never reorders a byte stream
                    last = due
                    await anyio.sleep(max(0.0, due - time.monotonic()))
                    await self._flowing.wait()
                    await dst.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            link.cancel()
