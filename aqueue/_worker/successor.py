"""Taking over from a dead predecessor at start, instead of waiting out its lease.

A worker that crashed leaves its tasks in its lease lists until its lease ends
(``lease_ttl``, 30 s by default) and a reaper returns them. When the worker that
replaces it can *prove* the predecessor is dead, it ends the predecessor's leases at
once and reaps them in its first pass, so a restarted worker picks up the crashed
work within a second or two:

- **The same worker id** (``Worker(worker_id=...)``, ``aqueue worker --worker-id``: a
  StatefulSet pod's name, a supervisor slot). Ids are the operator's promise that one
  process at a time runs under each: a worker starting under an id that has leases
  ends them first (its lease lists are its predecessor's).
- **The same host and process namespace, a process that is gone**: the registry card
  of a worker names its host, its pid and its process namespace; a card of this host
  and namespace whose pid no longer runs (or is this very process: a restarted
  container's first pid) is a dead worker's. A live pid is never taken over, and a
  card from another namespace (another container) proves nothing: its worker is left
  to its lease.

Ending a lease early changes nothing of fencing: the tasks go back through
``reap.lua`` (an attempt counted, "worker lost"), and a predecessor that were somehow
alive would find its lease gone at its next heartbeat and its late writes refused.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterable
from typing import Any

from .._codec import decode_value
from .._redis.broker import Broker
from .._redis.keys import lease_index_key, queue_keys, worker_key, workers_key
from ..errors import InvalidOption

log = logging.getLogger("aqueue.worker")

_WORKER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_worker_id(worker_id: object) -> str:
    """A worker id given by the operator: it names keys and fencing tokens."""
    if not isinstance(worker_id, str) or not _WORKER_ID.fullmatch(worker_id):
        raise InvalidOption(
            f"worker_id must be 1-64 characters of [A-Za-z0-9_-], got {worker_id!r}"
        )
    return worker_id


def process_namespace() -> str:
    """This process's boot and pid namespace: pids compare only within one."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""  # not Linux: no pid is ever proven gone


def gone(pid: object) -> bool:
    """Whether ``pid`` (of this namespace) no longer runs a process of its own."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if pid == os.getpid():
        return True  # a restarted container's first pid: the card is a predecessor's
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


async def take_over(
    broker: Broker, worker_id: str, own_queues: Iterable[str], *, own_id_given: bool
) -> list[str]:
    """End the leases of this worker's dead predecessors; their ids."""
    prefix = broker.prefix
    now = int(time.time() * 1000)
    registry = await broker.run(lambda: broker.redis.zrange(workers_key(prefix), 0, -1))
    ids = [_text(i) for i in registry]
    keys = [worker_key(prefix, i) for i in ids]
    # One GET each (pipelined): the cards are in different slots on a cluster.
    cards = await broker.run(lambda: broker.scripts([], [("GET", k) for k in keys])) if ids else []
    here, namespace = socket.gethostname(), process_namespace()
    dead: dict[str, list[str]] = {}
    for other, raw in zip(ids, cards, strict=True):
        card: dict[str, Any] = {}
        if raw is not None:
            card = decode_value(raw if isinstance(raw, bytes) else str(raw).encode())
        if other == worker_id:
            if own_id_given:
                dead[other] = list(own_queues)
            continue
        same_place = namespace and card.get("host") == here and card.get("ns") == namespace
        if same_place and gone(card.get("pid")):
            dead[other] = list(card.get("queues") or {})
    if own_id_given and worker_id not in dead:
        # Registered no more (its card lapsed) while leases of ours may still run.
        dead[worker_id] = list(own_queues)
    ended = []
    for other, queues in dead.items():
        commands: list[tuple[Any, ...]] = [
            ("ZADD", queue_keys(prefix, q).leases, "XX", "CH", now - 1, other) for q in queues
        ]
        commands.append(("ZADD", lease_index_key(prefix), "XX", "CH", now - 1, other))
        # A full server refuses these writes: the predecessor's lease then simply ends.
        replies = await broker.run(lambda c=commands: broker.scripts([], c, in_place=True))  # type: ignore[misc]
        changed = [r for r in replies if not isinstance(r, BaseException)]
        if other != worker_id or any(int(r) for r in changed):
            ended.append(other)
        if other != worker_id:
            log.warning(
                "worker %s on this host is gone (its process ended): its leases end now, "
                "its tasks go back to their queues", other,
            )  # fmt: skip
    return ended


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
