"""The worker's pub/sub listener: cancel requests for the tasks it runs, and delayed
tasks due before the forwarder's next wake-up.

It subscribes at first contact, before the first claim, so that no cancel request for
a task this worker runs can go by unheard. After a reconnect, requests published
meanwhile were missed: the heartbeat finds them in the persisted cancels set.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from typing import Any

import anyio
import redis.exceptions as rexc

from .._redis.broker import Broker
from .._redis.keys import cancel_channel, schedule_channel
from ..errors import BrokerUnavailable
from .outage import Outage

_CONNECTION_ERRORS = (rexc.ConnectionError, rexc.TimeoutError, ConnectionError, OSError)


class CancelListener:
    """The pub/sub subscription of one worker: cancel requests and schedule notices,
    resubscribed after an outage."""

    def __init__(
        self,
        broker: Broker,
        queues: Collection[str],
        *,
        cancel: Callable[[str, str], object],
        wake_forwarder: Callable[[int, str | None], None],
        outage: Outage,
    ) -> None:
        self._broker = broker
        self._queues = queues
        self._cancel = cancel
        self._wake_forwarder = wake_forwarder
        self._outage = outage
        self._pubsub: Any = None  # typed in some redis-py releases and not in others
        self._schedule_channel = schedule_channel(broker.prefix).encode()

    async def subscribe(self) -> None:
        """Subscribe on a new connection (closing this one if that fails)."""
        broker = self._broker
        self._pubsub = broker.redis.pubsub(ignore_subscribe_messages=True)
        prefix = broker.prefix
        try:
            await broker.run(
                functools.partial(
                    self._pubsub.subscribe, cancel_channel(prefix), schedule_channel(prefix)
                )
            )
        except BaseException:
            # The next try subscribes on a new connection: this one must not linger.
            await self.close()
            raise

    async def run(self) -> None:
        """Listen until cancelled; ``subscribe()`` came first, at first contact."""
        subscribed = True
        try:
            while True:
                try:
                    if not subscribed:
                        await self.subscribe()
                        subscribed = True
                        self._outage.ok()
                        # Notices sent while we were away are lost: look at every queue.
                        self._wake_forwarder(0, None)
                    # A bounded wait below the socket timeout: redis-py before 8.1 reads
                    # timeout=None as "the socket timeout" and raises at its end, which
                    # an idle worker would log as a lost server every few seconds.
                    message = await self._pubsub.get_message(timeout=self._broker.timeout)
                    if message is not None:
                        self._heard(message["channel"], bytes(message["data"]))
                except (BrokerUnavailable, *_CONNECTION_ERRORS) as exc:
                    subscribed = False
                    await self.close()
                    if not isinstance(exc, BrokerUnavailable):
                        exc = self._broker.unavailable(exc)
                    await self._outage.failed(exc)
        finally:
            await self.close()

    def _heard(self, channel: bytes, data: bytes) -> None:
        queue, _, rest = data.decode().partition("|")
        if channel == self._schedule_channel:
            if queue in self._queues and rest.isdigit():
                self._wake_forwarder(int(rest), queue)
        else:
            self._cancel(queue, rest)

    async def close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()
