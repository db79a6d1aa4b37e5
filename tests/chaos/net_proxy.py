"""A loopback TCP proxy that the chaos tests put between a worker and its server.

``cut()`` closes every relayed connection and drops new ones (accepted, then closed at
once) until ``restore()``: to the worker this looks like a network path that broke and
came back, while the server itself stays up and keeps its data.
"""

from __future__ import annotations

import anyio
import anyio.abc
from anyio.abc import SocketAttribute


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.relayed = 0  # connections relayed to the server
        self.dropped = 0  # connections refused while cut
        self.severed = 0  # live connections closed by cut()
        self._open = True
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
        self._open = False
        for scope in list(self._links):
            scope.cancel()
        self.severed += len(self._links)

    def restore(self) -> None:
        self._open = True

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            if not self._open:
                self.dropped += 1
                return
            try:
                upstream = await anyio.connect_tcp("127.0.0.1", self.target_port)
            except OSError:
                return
            async with upstream:
                if not self._open:  # cut while connecting
                    self.dropped += 1
                    return
                self.relayed += 1
                with anyio.CancelScope() as scope:
                    self._links.add(scope)
                    try:
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(_pump, client, upstream, scope)
                            tg.start_soon(_pump, upstream, client, scope)
                    finally:
                        self._links.discard(scope)


async def _pump(
    src: anyio.abc.SocketStream, dst: anyio.abc.SocketStream, link: anyio.CancelScope
) -> None:
    """Copy one direction; when either side closes, close the whole link."""
    try:
        async for chunk in src:
            await dst.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    finally:
        link.cancel()
