"""A worker's lease keeping: heartbeat, reaper and the forwarder of due tasks.

The heartbeat renews this worker's lease on each of its queues every ``lease_ttl / 3``.
If a renewal finds the lease had already expired (the worker was frozen, or cut off
for longer than the lease), a reaper may have handed its tasks to someone else, so the
handlers still running for that queue are cancelled; their late writes would be
refused by the fencing token anyway. The same happens, without asking the server,
once the last successful renewal is older than the lease.

Every worker also runs a reaper and a forwarder; both are idempotent scripts, safe to
run from any number of workers at once.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import socket
import time
from typing import TYPE_CHECKING, Any

import anyio
import redis.exceptions as rexc

from ._broker import SCRIPTS, Call
from ._codec import encode_value
from ._keys import (
    QueueKeys,
    cancel_channel,
    done_channel,
    queues_key,
    schedule_channel,
    worker_key,
    workers_key,
)
from .errors import BrokerUnavailable

if TYPE_CHECKING:
    from ._worker import Worker

log = logging.getLogger("aqueue.worker")

# Due tasks moved per queue and forwarder call; a larger backlog takes several calls.
FORWARD_BATCH = 1000
# Deletions of each kind per queue and janitor call.
JANITOR_BATCH = 500
# Upper bound on the forwarder's sleep. Delayed tasks written by clients wake it through
# pub/sub; this only bounds the delay for one whose message was missed (a reconnect).
FORWARD_MAX_SLEEP = 5.0


_CONNECTION_ERRORS = (rexc.ConnectionError, rexc.TimeoutError, ConnectionError, OSError)


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


class LeaseKeeper:
    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.ttl_ms = int(worker.lease_ttl * 1000)
        self.valid_until = math.inf
        self._forward_at = math.inf
        self._forward_event: anyio.Event | None = None
        self._card_bytes: bytes | None = None

    async def start(self) -> None:
        """First contact: fail fast (``BrokerUnavailable``) on a wrong URL or a down
        server, register the queues and take the lease, warn about risky settings."""
        w = self.w
        broker = w.broker
        await broker.run(lambda: broker.redis.ping())
        await broker.run(lambda: broker.redis.sadd(queues_key(broker.prefix), *w.queues))
        await self.renew()
        await self.subscribe()
        await self._boot_checks()

    async def _boot_checks(self) -> None:
        broker = self.w.broker
        try:
            config: dict[Any, Any] = await broker.run(
                lambda: broker.redis.config_get("maxmemory-policy")
            )
            policy = _text(config.get(b"maxmemory-policy", config.get("maxmemory-policy")))
            persist: dict[Any, Any] = await broker.run(
                lambda: broker.redis.config_get("appendonly")
            )
            aof = _text(persist.get(b"appendonly", persist.get("appendonly")))
            save: dict[Any, Any] = await broker.run(lambda: broker.redis.config_get("save"))
            rdb = _text(save.get(b"save", save.get("save")))
        except Exception:  # CONFIG is often disabled on managed servers: nothing to check
            return
        if policy and policy != "noeviction":
            log.warning(
                "the server's maxmemory-policy is %r, not 'noeviction': under memory "
                "pressure it may evict tasks",
                policy,
            )
        if aof != "yes" and not rdb:
            log.warning(
                "the server keeps nothing on disk (appendonly no, no save points): a "
                "server restart loses every task"
            )

    def _card(self) -> bytes:
        """This worker as ``Inspector.workers()`` shows it."""
        w = self.w
        if self._card_bytes is None:
            self._card_bytes = encode_value(
                {
                    "id": w.id,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "queues": dict(w.queues),
                    "concurrency": w.concurrency,
                    "started_at": int(time.time() * 1000),
                }
            )
        return self._card_bytes

    async def unregister(self) -> None:
        b = self.w.broker
        await b.run(
            lambda: b.scripts(
                [],
                [
                    ("ZREM", workers_key(b.prefix), self.w.id),
                    ("DEL", worker_key(b.prefix, self.w.id)),
                ],
            )
        )

    async def renew(self) -> None:
        w = self.w
        sent = time.monotonic()
        now = int(time.time() * 1000)
        calls: list[Call] = [
            (SCRIPTS.heartbeat, (k.leases,), [w.id, now, now + self.ttl_ms])
            for k in w._keys.values()
        ]
        # Re-registering the queues each time covers a server that lost its data.
        prefix = w.broker.prefix
        extra: list[tuple[Any, ...]] = [
            ("SADD", queues_key(prefix), *w.queues),
            ("ZADD", workers_key(prefix), now + self.ttl_ms, w.id),
            ("SET", worker_key(prefix, w.id), self._card(), "PX", self.ttl_ms),
            ("ZREMRANGEBYSCORE", workers_key(prefix), "-inf", now),
        ]
        # Cancel requests are persisted: one missed on pub/sub is found here.
        held = [(c.queue, c.id) for c in w._held.values()]
        if held:
            extra += [("SMISMEMBER", w._keys[q].cancels, i) for q, i in held]
        replies = await w.broker.run(lambda: w.broker.scripts(calls, extra))
        for (q, i), asked in zip(held, replies[len(calls) + 4 :], strict=True):
            if asked and asked[0]:
                w.cancel_held(q, i)
        replies = replies[: len(calls)]
        self.valid_until = sent + w.lease_ttl
        for q, live in zip(w._keys, replies, strict=True):
            if not live:
                n = w._cancel_queue(q, "lost")
                if n:
                    log.warning(
                        "lease of worker %s on queue %s had expired: cancelled %d handler(s) "
                        "whose tasks may now run elsewhere",
                        w.id,
                        q,
                        n,
                    )

    async def heartbeat_loop(self) -> None:
        w = self.w
        interval = w.lease_ttl / 3
        beats = 0
        while True:
            await anyio.sleep(interval)
            beats += 1
            if beats % 3 == 0:
                # Once per lease_ttl, audit our own lease lists: an id we do not hold
                # can be left there by any lost write (a failover that dropped an ack,
                # a reply lost on a cut connection), and no reaper touches a live lease.
                w._suspect.update(w.queues)
            try:
                await self.renew()
                w._recovered()
            except BrokerUnavailable as exc:
                if time.monotonic() >= self.valid_until and w._held:
                    log.warning(
                        "could not renew the lease of worker %s for %g s: cancelling its "
                        "%d handler(s), whose tasks the reaper will return",
                        w.id,
                        w.lease_ttl,
                        len(w._held),
                    )
                    w._cancel_all("lost")
                await w._outage(exc, sleep=0)

    async def reaper_loop(self) -> None:
        """Return the tasks of expired leases, at least every ``min(lease_ttl, 5)`` s."""
        interval = min(self.w.lease_ttl, 5.0)
        while True:
            try:
                await self.reap()
                await self.sweep()
            except BrokerUnavailable as exc:
                await self.w._outage(exc, sleep=0)
            # Jitter spreads the reapers of many workers over the interval.
            await anyio.sleep(interval * random.uniform(0.5, 1.0))

    async def reap(self) -> tuple[int, int]:
        w = self.w
        broker = w.broker
        now = int(time.time() * 1000)
        pipe_cmds = [("ZRANGEBYSCORE", k.leases, "-inf", now) for k in w._keys.values()]
        expired = await broker.run(lambda: broker.scripts([], pipe_cmds))
        calls: list[Call] = []
        reaped: list[str] = []
        for (q, k), wids in zip(w._keys.items(), expired, strict=True):
            if not wids:
                continue
            reaped.append(q)
            ids = [x.decode() for x in wids]
            keys = (
                k.leases, k.pending, k.tasks, k.states, k.archived, k.retried, k.errors,
                k.failed_at, k.stats, k.uniq, k.uniq_exp, k.cancels, k.progress,
                *(k.lease(i) for i in ids),
            )  # fmt: skip
            calls.append((SCRIPTS.reap, keys, [now, today(), *ids]))
            log.info("reaping expired lease(s) %s on queue %s", ids, q)
        if not calls:
            return (0, 0)
        replies = await broker.run(lambda: broker.scripts(calls))
        recovered = sum(int(r[0]) for r in replies)
        archived = sum(int(r[1]) for r in replies)
        notices = [
            ("PUBLISH", done_channel(broker.prefix, q), b"archived|" + b",".join(r[2:]))
            for q, r in zip(reaped, replies, strict=True)
            if len(r) > 2
        ]
        if notices:
            await broker.run(lambda: broker.scripts([], notices))
        if recovered or archived:
            log.warning(
                "recovered %d task(s) of lost workers (%d archived: retries spent)",
                recovered,
                archived,
            )
        return (recovered, archived)

    async def subscribe(self) -> None:
        """Subscribe to cancel requests; done at start, before the first claim, so no
        request for a task this worker runs can go by unheard."""
        w = self.w
        self._pubsub = w.broker.redis.pubsub(ignore_subscribe_messages=True)
        prefix = w.broker.prefix
        await w.broker.run(
            functools.partial(
                self._pubsub.subscribe, cancel_channel(prefix), schedule_channel(prefix)
            )
        )
        self._schedule_channel = schedule_channel(prefix).encode()

    async def cancel_loop(self) -> None:
        """Listen for cancel requests (``Client.cancel``/``Inspector.cancel``) and for
        delayed tasks due before the forwarder's next wake-up.

        After a reconnect, requests published meanwhile were missed: the heartbeat
        finds them in the persisted cancels set.
        """
        w = self.w
        subscribed = True  # by start()
        try:
            while True:
                try:
                    if not subscribed:
                        await self.subscribe()
                        subscribed = True
                    message = await self._pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    queue, _, rest = bytes(message["data"]).decode().partition("|")
                    if message["channel"] == self._schedule_channel:
                        if queue in w.queues and rest.isdigit():
                            self.wake_forwarder(int(rest))
                    else:
                        w.cancel_held(queue, rest)
                except (BrokerUnavailable, *_CONNECTION_ERRORS) as exc:
                    subscribed = False
                    with anyio.CancelScope(shield=True):
                        await self._pubsub.aclose()  # type: ignore[no-untyped-call]
                    error = exc if isinstance(exc, BrokerUnavailable) else w.broker.unavailable(exc)
                    await w._outage(error)
        finally:
            with anyio.CancelScope(shield=True):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def sweep(self) -> int:
        """Delete expired completed tasks, trim the archive, drop expired unique locks
        (janitor.lua), in bounded calls until nothing is left to do."""
        w = self.w
        broker = w.broker
        total = 0
        queues = list(w._keys.values())
        while queues:
            now = int(time.time() * 1000)
            args = [now, w.max_archived, int(w.archive_ttl * 1000), JANITOR_BATCH]
            calls: list[Call] = [(SCRIPTS.janitor, _janitor_keys(k), args) for k in queues]
            replies = await broker.run(functools.partial(broker.scripts, calls))
            total += sum(int(r[0]) for r in replies)
            queues = [k for k, r in zip(queues, replies, strict=True) if int(r[2])]
        return total

    def wake_forwarder(self, due_ms: int) -> None:
        """Make the forwarder run no later than ``due_ms``."""
        if due_ms / 1000 < self._forward_at and self._forward_event is not None:
            self._forward_event.set()

    async def forward_loop(self) -> None:
        w = self.w
        broker = w.broker
        while True:
            # Any wake-up from here on interrupts the coming sleep: one that arrives
            # while the script runs may be for a task the script did not see.
            self._forward_event = anyio.Event()
            self._forward_at = math.inf
            now = int(time.time() * 1000)
            calls: list[Call] = [
                (SCRIPTS.forward, (k.scheduled, k.retry, k.pending, k.states), [now, FORWARD_BATCH])
                for k in w._keys.values()
            ]
            try:
                replies = await broker.run(functools.partial(broker.scripts, calls))
            except BrokerUnavailable as exc:
                await w._outage(exc)
                continue
            moved = sum(int(r[0]) for r in replies)
            if moved >= FORWARD_BATCH:
                continue  # more are due right now
            nexts = [int(r[1]) for r in replies if int(r[1]) >= 0]
            wake = time.time() + FORWARD_MAX_SLEEP
            if nexts:
                wake = min(wake, min(nexts) / 1000)
            self._forward_at = wake
            with anyio.move_on_after(max(0.0, wake - time.time())):
                await self._forward_event.wait()


def _janitor_keys(k: QueueKeys) -> tuple[str, ...]:
    return (
        k.completed, k.archived, k.tasks, k.states, k.retried, k.errors, k.failed_at,
        k.results, k.progress, k.uniq, k.uniq_exp, k.cancels,
    )  # fmt: skip


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value) if value is not None else ""
