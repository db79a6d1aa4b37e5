"""A loopback TCP proxy that the chaos tests put between a worker and its server.

``cut()`` closes every relayed connection and drops new ones (accepted, then closed at
once) until ``restore()``: to the worker this looks like a network path that broke and
came back, while the server itself stays up and keeps its data.

``lose_reply(marker)`` relays the next request that carries ``marker`` (a script's SHA)
and then closes its connection without relaying the reply: the server ran the request,
and the client never hears that it did.
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
        self.marker: bytes | None = None  # see lose_reply(); None once a reply was lost

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

    def lose_reply(self, marker: bytes) -> None:
        self.marker = marker

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
                        link = _Link(scope)
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(self._pump, client, upstream, link, True)
                            tg.start_soon(self._pump, upstream, client, link, False)
                    finally:
                        self._links.discard(scope)

    async def _pump(
        self,
        src: anyio.abc.SocketStream,
        dst: anyio.abc.SocketStream,
        link: _Link,
        upstream: bool,
    ) -> None:
        """Copy one direction; when either side closes, close the whole link."""
        try:
            async for chunk in src:
                if link.mute:
                    continue  # the reply to lose, on its way back to the client
                marked = upstream and self.marker is not None and self.marker in chunk
                if marked:
                    self.marker = None
                    link.mute = True
                await dst.send(chunk)
                if marked:
                    await anyio.sleep(0.2)  # the server runs the request meanwhile
                    break
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            link.scope.cancel()


class _Link:
    """One relayed connection: its scope, and whether replies are being dropped."""

    def __init__(self, scope: anyio.CancelScope) -> None:
        self.scope = scope
        self.mute = False
