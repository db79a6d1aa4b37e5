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
import itertools
import logging
import math
import os
import random
import socket
import time
from typing import TYPE_CHECKING, Any

import anyio
import redis.exceptions as rexc

from ._broker import SCRIPTS, Call, redacted
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
from ._outage import waiting_helps
from .errors import AqueueError, BrokerUnavailable

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
# The oldest server aqueue runs on (BLMOVE and SMISMEMBER need 6.2; 7 is what is tested).
# Valkey reports a Redis version (7.2.4) it is compatible with.
MIN_VERSION = (7, 0)


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

    async def start(self, wait: bool = False) -> None:
        """First contact: register the queues, take the lease, subscribe to cancel
        requests, then warn about risky settings.

        A server that cannot be used yet (down, restarting, still loading its data) is
        waited for when ``wait``, with the backoff and log policy of an outage, and
        raised as ``BrokerUnavailable`` otherwise. What waiting cannot fix (refused
        credentials, a peer that is not Redis, a server without a command aqueue needs)
        is raised at once either way.
        """
        outage = self.w._outage
        while True:
            try:
                await self._first_contact()
            except BrokerUnavailable as exc:
                if not wait or not waiting_helps(exc):
                    raise
                await outage.failed(exc)
            except rexc.ResponseError as exc:  # a refusal the broker leaves to callers
                error = self.w.broker.unavailable(exc)
                if not wait or not waiting_helps(exc):
                    raise error from exc
                await outage.failed(error)
            else:
                break
        outage.ok()
        await self._boot_checks()

    async def _first_contact(self) -> None:
        w = self.w
        broker = w.broker
        await broker.run(lambda: broker.redis.ping())
        await self._check_version()
        # Through ``scripts``: the hot path's own connections are tried at start too.
        register = [("SADD", queues_key(broker.prefix), *w.queues)]
        await broker.run(lambda: broker.scripts([], register))
        await self.renew()
        try:
            await self.subscribe()
        except BaseException:
            # The next try subscribes on a new connection: this one must not linger.
            await self._close_pubsub()
            raise

    async def _check_version(self) -> None:
        """Refuse a server older than aqueue supports: waiting will not upgrade it."""
        broker = self.w.broker
        try:
            info: dict[Any, Any] = await broker.run(lambda: broker.redis.info("server"))
        except BrokerUnavailable as exc:
            if waiting_helps(exc):
                raise
            return  # INFO refused to this user (NOPERM): nothing to check
        except rexc.ResponseError:
            return  # INFO renamed away on a managed server: nothing to check
        version = server_version(info)
        if version is not None and too_old(version):
            raise AqueueError(
                f"the server at {redacted(broker.url)} is Redis {version}: aqueue needs "
                f"Redis {'.'.join(map(str, MIN_VERSION))} or later, or Valkey"
            )

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
                w._outage.ok()
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
                await w._outage.failed(exc, sleep=0)

    async def reaper_loop(self) -> None:
        """Return the tasks of expired leases, at least every ``min(lease_ttl, 5)`` s."""
        interval = min(self.w.lease_ttl, 5.0)
        while True:
            try:
                await self.reap()
                await self.sweep()
                self.w._outage.ok()
            except BrokerUnavailable as exc:
                await self.w._outage.failed(exc, sleep=0)
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
                        w._outage.ok()
                    # A bounded wait below the socket timeout: redis-py before 8.1 reads
                    # timeout=None as "the socket timeout" and raises at its end, which
                    # an idle worker would log as a lost server every few seconds.
                    message = await self._pubsub.get_message(timeout=w.broker.timeout)
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
                    await self._close_pubsub()
                    error = exc if isinstance(exc, BrokerUnavailable) else w.broker.unavailable(exc)
                    await w._outage.failed(error)
        finally:
            await self._close_pubsub()

    async def _close_pubsub(self) -> None:
        # Typed in some redis-py releases and not in others: called through Any.
        pubsub: Any = self._pubsub
        with anyio.CancelScope(shield=True):
            await pubsub.aclose()

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
                await w._outage.failed(exc)
                continue
            w._outage.ok()
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


def server_version(info: dict[Any, Any]) -> str | None:
    """The ``redis_version`` of an ``INFO server`` reply; a cluster client may answer
    with one reply per node, and then the oldest counts. None when there is none that
    reads as a version: such a server is given the benefit of the doubt."""
    found = [
        v
        for k, value in info.items()
        if _text(k) == "redis_version" and (v := _text(value))[:1].isdigit()
    ]
    for value in info.values():
        if isinstance(value, dict):
            found += [v for v in [server_version(value)] if v is not None]
    if not found:
        return None
    return min(found, key=_version_tuple)


def too_old(version: str) -> bool:
    return _version_tuple(version) < MIN_VERSION


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(itertools.takewhile(str.isdigit, part))
        parts.append(int(digits or 0))
    return tuple(parts)
