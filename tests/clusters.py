"""A 3-master Valkey Cluster on loopback ports, formed with CLUSTER ADDSLOTSRANGE and
CLUSTER MEET (about 2 s). One per test session (the ``cluster`` fixture in conftest),
shared by the ``url`` fixture's "cluster" kind and by tests/test_cluster.py.

Its nodes keep an append-only file (fsync every second, cheap) so that a durable
enqueue, which waits on WAITAOF, can be confirmed on a cluster too."""

from __future__ import annotations

from typing import Any

import redis

from aqueue._server import EmbeddedServer, free_port
from aqueue.errors import AqueueError

SLOTS = [(0, 5460), (5461, 10922), (10923, 16383)]
CLUSTER_FLAGS = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "2000"]  # fmt: skip


def command(node: redis.Redis, *args: str | int) -> Any:
    return node.execute_command(*args)  # type: ignore[no-untyped-call]


class Cluster:
    """Three masters, a third of the slots each; call ``ok()`` until it is formed."""

    def __init__(self) -> None:
        self.bus: list[int] = []
        self.servers: list[EmbeddedServer] = []
        self.nodes: list[redis.Redis] = []
        try:
            for _ in SLOTS:
                self._start_node()
            self.nodes = [redis.Redis(port=s.port) for s in self.servers]
            for node, (first, last) in zip(self.nodes, SLOTS, strict=True):
                command(node, "CLUSTER", "ADDSLOTSRANGE", first, last)
            for server, bus in zip(self.servers[1:], self.bus[1:], strict=True):
                command(self.nodes[0], "CLUSTER", "MEET", "127.0.0.1", server.port, bus)
        except BaseException:
            self.close()  # no server left running behind a failed start
            raise

    def _start_node(self, tries: int = 5) -> None:
        """Start one node on free ports. A free port is only free when it is chosen:
        another process (a busy machine's tests, a soak's proxies) may take it, or the
        bus port, before the node listens; then take others."""
        for attempt in range(tries):
            bus = free_port()
            server = EmbeddedServer(
                appendonly=True, extra=[*CLUSTER_FLAGS, "--cluster-port", str(bus)]
            )
            try:
                server.start()
            except AqueueError as exc:
                server.close()
                if "Failed listening" not in str(exc) or attempt == tries - 1:
                    raise
                continue
            self.bus.append(bus)
            self.servers.append(server)
            return

    def ok(self) -> bool:
        return all(b"cluster_state:ok" in command(n, "CLUSTER", "INFO") for n in self.nodes)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def node_of(self, key: str) -> int:
        """Index of the master holding ``key``."""
        slot = int(command(self.nodes[0], "CLUSTER", "KEYSLOT", key))
        return next(i for i, (first, last) in enumerate(SLOTS) if first <= slot <= last)

    def flush(self) -> None:
        for n in self.nodes:
            n.flushall()

    def close(self) -> None:
        for n in self.nodes:
            n.close()
        for s in self.servers:
            s.close()
