"""A worker and its server in network namespaces, with a network between them that can
be made slow, lossy, or cut.

``Topology()`` builds, as root, with iproute2 (``ip``)::

      namespace W                root namespace                   namespace S
    +-------------+                                             +-------------+
    | w0  .a.2/24 |--veth--[w1]==impairment==[s1]--veth--------| s0  .a.1/24 |
    |             |                                             |             |
    |             |                 .b.2/24 [u1]--veth----------| u0  .b.1/24 |
    |             |                                             |             |
    | x0  .c.2/24 |--veth---------------------------------------| x1  .c.1/24 |
    +-------------+                                             +-------------+

where ``.a``, ``.b`` and ``.c`` are three /24s of 10.213.0.0/16 that no other
topology on the machine holds. Code under test in W reaches the server in S through
the impairment (``server_address``). The test process, and any worker it runs in the
root namespace, reach the same server directly (``clean_server_address``). The side
link ``x`` (``side_server_address``) is for a test's own bookkeeping from W, such as
handlers recording what ran, which must not fail because of the network under test.
W has no other route: its traffic goes to S or nowhere.

The impairment is ``tc qdisc netem`` on w1 and s1 (each direction once, the two ports
bridged) when the kernel has netem, else ``frame_relay``: a child process that copies
frames between w1 and s1 itself (set ``AQUEUE_NETNS_IMPAIRMENT=relay`` to use it
anyway). Either way ``impair`` and ``partition`` act on whole frames, below TCP, as a
slow or broken network does: nothing is told to the endpoints.

Hygiene, so that runs in parallel never meet and nothing leaks:

* names carry the pid and a counter; the /24s are taken under a file lock, as a /22
  reserved by an ``unreachable`` route in the root namespace until ``close``, so that a
  packet for an address of a topology already taken down fails at once instead of
  following the default route off the machine;
* IPv6 is off on every interface of the topology (no router solicitations or duplicate
  address probes in the way), and the neighbours across the impairment are static, so
  the only frames on it are the IPv4 traffic of the test;
* ``close`` (also on a failed build, and from ``with``) kills whatever still runs in
  W and S, then removes the relay, the interfaces, the namespaces and the route.

``unavailable()`` says why a topology cannot be built here (not root, no ``ip``, no
namespaces, veth or packet sockets), for a ``pytest.skip``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, get_args

from .frame_relay import RelayProcess

# Every topology's addresses come from here: block i is the /22 10.213.4i.0/22, whose
# /24s are its links: +0 the impaired one, +1 root to S, +2 the side link from W to S.
SPACE = ipaddress.ip_network("10.213.0.0/16")
BLOCK_BITS = 10  # a /22
IMPAIRED, CLEAN, SIDE = 0, 1, 2
# The metric of the reserving route: above a connected route's (0), so the topology's
# own routes win while its interfaces exist.
GUARD_METRIC = 4213
LOCK = Path(tempfile.gettempdir()) / "aqueue-netns.lock"
_counter = itertools.count()

Toward = Literal["both", "server", "worker"]


class NetnsError(Exception):
    """Raised when a step of building or driving a topology fails."""


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def _must(*argv: str) -> str:
    done = _run(*argv)
    if done.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


@functools.cache
def unavailable() -> str | None:
    """Why no topology can be built on this machine, or None when one can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "building network namespaces needs root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) to build network namespaces with"
    probe = f"aqprobe{os.getpid():x}"
    try:
        if (done := _run("ip", "netns", "add", probe)).returncode != 0:
            return f"cannot create a network namespace: {done.stderr.strip()}"
        veth = _run(
            "ip", "link", "add", probe, "type", "veth", "peer", "name", "p0", "netns", probe
        )
        if veth.returncode != 0:
            return f"cannot create a veth pair: {veth.stderr.strip()}"
        try:
            socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()
        except OSError as exc:
            return f"cannot open a packet socket (AF_PACKET) to relay frames with: {exc}"
        return None
    finally:
        _run("ip", "link", "del", probe)
        _run("ip", "netns", "del", probe)


@dataclass(frozen=True)
class Impairment:
    """What the impaired link does to each frame going ``toward`` the server, the
    worker, or both ways."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0  # 0..1
    toward: Toward = "both"

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0 or not 0 <= self.loss <= 1:
            raise ValueError(f"bad impairment: {self!r}")
        if self.toward not in get_args(Toward):
            raise ValueError(f"bad impairment: toward={self.toward!r}")

    def __str__(self) -> str:
        if not (self.delay_ms or self.loss):
            return "clean"
        way = "each way" if self.toward == "both" else f"toward the {self.toward}"
        return f"{self.delay_ms:g} ms +- {self.jitter_ms:g} ms and {self.loss:.0%} loss {way}"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with LOCK.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _taken_blocks() -> set[int]:
    """The blocks of SPACE that an address or route of the root namespace touches."""
    routes = json.loads(_must("ip", "-4", "-j", "route", "show", "table", "all") or "[]")
    addrs = json.loads(_must("ip", "-4", "-j", "addr", "show") or "[]")
    prefixes = [r["dst"] for r in routes if r.get("dst", "default") != "default"]
    prefixes += [f"{a['local']}/{a['prefixlen']}" for i in addrs for a in i.get("addr_info", [])]
    taken: set[int] = set()
    for prefix in prefixes:
        net = ipaddress.ip_network(prefix, strict=False)
        if not isinstance(net, ipaddress.IPv4Network) or not net.overlaps(SPACE):
            continue
        if net.prefixlen < SPACE.prefixlen:
            raise NetnsError(f"the root namespace routes {net}: no room for a topology")
        base = int(SPACE.network_address)
        first = (int(net.network_address) - base) >> BLOCK_BITS
        last = (int(net.broadcast_address) - base) >> BLOCK_BITS
        taken.update(range(first, last + 1))
    return taken


def _disable_ipv6(iface: str) -> None:
    """Before the interface is up, so that it never sends an IPv6 frame."""
    with contextlib.suppress(FileNotFoundError):  # a kernel without IPv6
        Path(f"/proc/sys/net/ipv6/conf/{iface}/disable_ipv6").write_text("1")


class Topology:
    """Namespaces W (worker) and S (server), joined by an impairable link; see the module
    docstring. Build it as root; ``close`` it (or use ``with``) whatever happens."""

    def __init__(self) -> None:
        # Short: interface names stop at 15 characters.
        self.tag = f"{os.getpid():x}{next(_counter)}"
        self.worker_ns = f"aqueue-W-{self.tag}"
        self.server_ns = f"aqueue-S-{self.tag}"
        # The root namespace's ends of the veth pairs, and the netem bridge.
        self._w1, self._s1, self._u1, self._br = (f"aq{self.tag}{x}" for x in "wsub")
        self._block: int | None = None
        self._relay: RelayProcess | None = None
        self.mechanism: Literal["netem", "relay"] = "relay"
        self._impairment = Impairment()
        self._partitioned = False
        self._closed = False
        try:
            self._reserve_addresses()
            self._make_namespaces()
            self._make_links()
            self._make_impairment()
        except BaseException:
            self.close()
            raise

    # -- addresses ----------------------------------------------------------------------

    def _address(self, link: int, host: int) -> str:
        assert self._block is not None
        return str(SPACE.network_address + (self._block << BLOCK_BITS) + link * 256 + host)

    @property
    def worker_address(self) -> str:
        """The worker's address in W, on the impaired link."""
        return self._address(IMPAIRED, 2)

    @property
    def server_address(self) -> str:
        """The server's address as W sees it: across the impairment."""
        return self._address(IMPAIRED, 1)

    @property
    def clean_server_address(self) -> str:
        """The server's address as the root namespace sees it: never impaired."""
        return self._address(CLEAN, 1)

    @property
    def side_server_address(self) -> str:
        """The server's address over W's side link: never impaired, for a test's own
        bookkeeping from W, never for the code under test."""
        return self._address(SIDE, 1)

    def _guard(self) -> str:
        return f"{self._address(0, 0)}/{32 - BLOCK_BITS}"

    # -- running things inside ----------------------------------------------------------

    def run_in_worker_ns(self, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` in W (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.worker_ns, *argv]

    def run_in_server_ns(self, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` in S."""
        return ["ip", "netns", "exec", self.server_ns, *argv]

    # -- building -----------------------------------------------------------------------

    def _reserve_addresses(self) -> None:
        with _locked():
            taken = _taken_blocks()
            free = [i for i in range(SPACE.num_addresses >> BLOCK_BITS) if i not in taken]
            if not free:
                raise NetnsError(f"every /{32 - BLOCK_BITS} of {SPACE} is taken")
            self._block = free[0]
            # The route is the reservation: the next topology's _taken_blocks sees it.
            _must("ip", "route", "add", "unreachable", self._guard(), "metric", str(GUARD_METRIC))

    def _make_namespaces(self) -> None:
        for ns in (self.worker_ns, self.server_ns):
            _must("ip", "netns", "add", ns)
            # Interfaces created in the namespace from now on start without IPv6.
            no_ipv6 = " && ".join(
                f"echo 1 > /proc/sys/net/ipv6/conf/{c}/disable_ipv6" for c in ("all", "default")
            )
            _must(*self._in(ns, "sh", "-c", f"[ ! -d /proc/sys/net/ipv6 ] || {{ {no_ipv6}; }}"))
            _must("ip", "-n", ns, "link", "set", "lo", "up")

    def _in(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def _up(self, ns: str, iface: str, link: int, host: int) -> None:
        """Give ``iface`` in ``ns`` the address ``host`` of ``link``, and bring it up."""
        _must("ip", "-n", ns, "addr", "add", f"{self._address(link, host)}/24", "dev", iface)
        _must("ip", "-n", ns, "link", "set", iface, "up")

    def _make_links(self) -> None:
        for end, inside, ns in (
            (self._w1, "w0", self.worker_ns),
            (self._s1, "s0", self.server_ns),
            (self._u1, "u0", self.server_ns),
        ):
            _must("ip", "link", "add", end, "type", "veth", "peer", "name", inside, "netns", ns)
            _disable_ipv6(end)
        _must("ip", "-n", self.worker_ns, "link", "add", "x0", "type", "veth",
              "peer", "name", "x1", "netns", self.server_ns)  # fmt: skip
        self._up(self.worker_ns, "w0", IMPAIRED, 2)
        self._up(self.server_ns, "s0", IMPAIRED, 1)
        self._up(self.server_ns, "u0", CLEAN, 1)
        self._up(self.worker_ns, "x0", SIDE, 2)
        self._up(self.server_ns, "x1", SIDE, 1)
        _must("ip", "addr", "add", f"{self._address(CLEAN, 2)}/24", "dev", self._u1)
        # No ARP across the impairment: its frames are the test's traffic only.
        for ns, iface, neighbour, peer_ns, peer in (
            (self.worker_ns, "w0", self.server_address, self.server_ns, "s0"),
            (self.server_ns, "s0", self.worker_address, self.worker_ns, "w0"),
        ):
            info = json.loads(_must("ip", "-n", peer_ns, "-j", "link", "show", peer))
            _must("ip", "-n", ns, "neigh", "replace", neighbour, "lladdr", info[0]["address"],
                  "dev", iface, "nud", "permanent")  # fmt: skip

    def _make_impairment(self) -> None:
        self.mechanism = self._choose_mechanism()
        if self.mechanism == "netem":
            _must("ip", "link", "add", self._br, "type", "bridge")
            _disable_ipv6(self._br)
            for port in (self._w1, self._s1):
                _must("ip", "link", "set", port, "master", self._br)
            _must("ip", "link", "set", self._br, "up")
        for end in (self._w1, self._s1, self._u1):
            _must("ip", "link", "set", end, "up")
        if self.mechanism == "relay":
            self._relay = RelayProcess(self._w1, self._s1)
        self._apply()

    def _choose_mechanism(self) -> Literal["netem", "relay"]:
        if os.environ.get("AQUEUE_NETNS_IMPAIRMENT") == "relay":
            return "relay"
        probe = _run("tc", "qdisc", "add", "dev", self._w1, "root", "netem", "delay", "0ms")
        if probe.returncode != 0:
            return "relay"  # "Specified qdisc kind is unknown"
        _run("tc", "qdisc", "del", "dev", self._w1, "root")
        return "netem"

    # -- impairing ----------------------------------------------------------------------

    def impair(
        self,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        loss: float = 0.0,
        *,
        toward: Toward = "both",
    ) -> None:
        """From now on each frame between W and S going ``toward`` the server, the
        worker or both ways waits ``delay_ms`` +- up to ``jitter_ms`` and is lost with
        probability ``loss`` (0..1); the other direction, if any, is clean, and so is
        everything with all three zero. During a partition it takes effect at ``heal``.
        (netem set up on one interface, as usual, is one direction: what leaves it.)"""
        self.impair_as(Impairment(delay_ms, jitter_ms, loss, toward))

    def impair_as(self, impairment: Impairment) -> None:
        """``impair`` with the settings of ``impairment``."""
        self._impairment = impairment
        self._apply()

    def partition(self) -> None:
        """Drop every frame between W and S, those already on the way too, until
        ``heal``: neither side is told, as when a cable is cut."""
        self._partitioned = True
        self._apply()

    def heal(self) -> None:
        """End the partition; the impairment set before applies again."""
        self._partitioned = False
        self._apply()

    def stats(self) -> str:
        """What the impairment did so far, in its own words."""
        if self._relay is not None:
            return self._relay.command("stats")
        return " | ".join(
            _must("tc", "-s", "qdisc", "show", "dev", d) for d in (self._s1, self._w1)
        )

    def worker_bytes_in_flight(self) -> int:
        """Bytes that TCP sockets in W sent to the server and have not seen
        acknowledged, closed sockets included: 0 once everything sent across the
        impairment has arrived, or been given up. After a heal, what a cut held back
        lands when TCP next retransmits it, which can be tens of seconds later."""
        server = socket.inet_aton(self.server_address)[::-1].hex().upper()
        total = 0
        for line in _must(*self.run_in_worker_ns(["cat", "/proc/net/tcp"])).splitlines()[1:]:
            # sl local_address rem_address st tx_queue:rx_queue ... (hex)
            fields = line.split()
            if fields[2].split(":")[0] == server:
                total += int(fields[4].split(":")[0], 16)
        return total

    def _apply(self) -> None:
        i = self._impairment
        if self._relay is not None:
            # The relay's A is w1 (frames from W, going toward S), its B is s1.
            self._relay.command("partition" if self._partitioned else "heal")
            way = {"both": "both", "server": "ab", "worker": "ba"}[i.toward]
            self._relay.impair(i.delay_ms, i.jitter_ms, i.loss, way)
            return
        impaired = ["delay", f"{i.delay_ms:g}ms"]
        if i.jitter_ms:
            impaired.append(f"{i.jitter_ms:g}ms")
        impaired += ["loss", f"{i.loss * 100:g}%"]
        # The root qdisc of a bridge port shapes what leaves it: s1 toward S, w1 toward W.
        for toward, port in (("server", self._s1), ("worker", self._w1)):
            if self._partitioned:
                spec = ["loss", "100%"]
            elif i.toward in ("both", toward):
                spec = impaired
            else:
                spec = ["delay", "0ms"]
            _must("tc", "qdisc", "replace", "dev", port, "root", "netem", *spec)

    # -- taking down --------------------------------------------------------------------

    def close(self) -> None:
        """Take everything down; safe to call twice, and on a half-built topology."""
        if self._closed:
            return
        self._closed = True
        if self._relay is not None:
            self._relay.close()
        # What was started inside must not outlive the namespaces (nor talk to an
        # address the guard route no longer covers).
        for ns in (self.worker_ns, self.server_ns):
            for pid in _run("ip", "netns", "pids", ns).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        # Removing one end of a veth removes both at once; removing a namespace takes
        # its interfaces down in the background.
        for iface in (self._br, self._w1, self._s1, self._u1):
            _run("ip", "link", "del", iface)
        for ns in (self.worker_ns, self.server_ns):
            _run("ip", "netns", "del", ns)
        if self._block is not None:
            _run("ip", "route", "del", "unreachable", self._guard(), "metric", str(GUARD_METRIC))

    def __enter__(self) -> Topology:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
