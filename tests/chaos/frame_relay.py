"""A userspace Ethernet relay between two interfaces, with delay, jitter, loss and cuts.

Stands in for ``tc qdisc ... netem`` on kernels built without it (``netns`` uses it when
the kernel has no netem qdisc). ``RelayProcess`` runs it as a child process, as root::

    python -m tests.chaos.frame_relay IFACE_A IFACE_B [--seed N]

It reads every frame that arrives on one interface (an ``AF_PACKET`` socket) and writes
it out of the other after the set delay, or drops it. Commands come on stdin, one a
line, and each is answered by a line on stdout once in force:

* ``impair DELAY_MS JITTER_MS LOSS [both|ab|ba]`` -- each frame going from A to B
  (``ab``), from B to A (``ba``) or either way (``both``, the default) waits
  ``DELAY_MS`` +- up to ``JITTER_MS`` and is dropped with probability ``LOSS``
  (0..1); the other direction, if any, is left clean;
* ``partition`` -- drop every frame, those already waiting too, until ``heal``;
* ``heal`` -- end the partition; the impairment set before it applies again;
* ``stats`` -- answers ``relayed=N lost=N cut=N oversize=N``: frames relayed, lost to
  ``LOSS``, dropped by a partition, and too big for the relay's buffer (never expected).

The relay exits when stdin closes, so it never outlives the process that started it.

Why ``PACKET_VNET_HDR``: a veth hands a packet socket what its sender's stack built,
segmentation offload super-frames of up to 64 KiB and TCP checksums left for a device to
fill in. Written out raw, the first exceed the MTU and the second arrive corrupt. With
the virtio header on both sockets, the kernel tells the reader what each frame still
needs and the writer passes that on, so no offload needs turning off (no ethtool). The
price: a super-frame is lost or delayed whole, a burst of segments, as netem does with
the same frames.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import os
import random
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

ETH_P_ALL = 0x0003
# <linux/if_packet.h>: not exported by the socket module.
PACKET_OUTGOING = 4
PACKET_VNET_HDR = 15
SOL_PACKET = 263
# The biggest frame a veth hands over with offloads on (64 KiB GSO plus headers), with
# room to spare: a frame cut short by the buffer is counted and dropped, never relayed.
FRAME_BUFFER = 256 * 1024
SOCKET_BUFFER = 8 * 1024 * 1024
# Which of the two links (A to B, B to A) an ``impair`` command names.
DIRECTIONS = {"both": (True, True), "ab": (True, False), "ba": (False, True)}
ROOT = Path(__file__).resolve().parents[2]
# Starting the relay is starting a Python interpreter: seconds on a busy machine.
ANSWER_TIMEOUT = 20.0


class Link:
    """One direction's impairment, and its queue of frames waiting to go out."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.delay = 0.0
        self.jitter = 0.0
        self.loss = 0.0
        self.cut = False
        # Frames leave in arrival order: a frame's due time is never before that of the
        # frame ahead of it, so jitter stretches gaps but never reorders (TCP would
        # read reordering as loss and retransmit).
        self._last_due = 0.0

    def due(self, now: float) -> float | None:
        """When a frame arriving ``now`` goes out, or None to drop it."""
        if self.cut or (self.loss and self.rng.random() < self.loss):
            return None
        wait = self.delay + (self.rng.uniform(-self.jitter, self.jitter) if self.jitter else 0)
        self._last_due = max(now + max(wait, 0.0), self._last_due)
        return self._last_due


def _packet_socket(iface: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        s.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    s.bind((iface, ETH_P_ALL))
    s.setblocking(False)
    return s


class Relay:
    """The child's side: both packet sockets, both links, the frames waiting."""

    def __init__(self, a: str, b: str, seed: int | None) -> None:
        rng = random.Random(seed)
        self.socks = (_packet_socket(a), _packet_socket(b))
        self.links = (Link(rng), Link(rng))  # a -> b, b -> a
        self.queue: list[tuple[float, int, int, bytes]] = []  # (due, seq, out, frame)
        self.seq = 0
        self.relayed = self.lost = self.cut = self.oversize = 0
        self._commands = b""

    def command(self, line: str) -> str:
        words = line.split()
        if not words:
            return "error: empty command"
        verb, args = words[0], words[1:]
        if verb == "impair" and len(args) in (3, 4):
            delay, jitter, loss = float(args[0]) / 1000, float(args[1]) / 1000, float(args[2])
            toward = args[3] if len(args) == 4 else "both"
            if delay < 0 or jitter < 0 or not 0 <= loss <= 1 or toward not in DIRECTIONS:
                return f"error: bad impairment {line!r}"
            for link, impaired in zip(self.links, DIRECTIONS[toward], strict=True):
                link.delay, link.jitter, link.loss = (
                    (delay, jitter, loss) if impaired else (0, 0, 0)
                )
            return "ok"
        if verb in ("partition", "heal") and not args:
            for link in self.links:
                link.cut = verb == "partition"
            if verb == "partition":
                # A cut cable loses what is on it too.
                self.cut += len(self.queue)
                self.queue.clear()
            return "ok"
        if verb == "stats" and not args:
            return (
                f"relayed={self.relayed} lost={self.lost} cut={self.cut} oversize={self.oversize}"
            )
        return f"error: unknown command {line!r}"

    def receive(self, side: int, now: float) -> None:
        sock, link = self.socks[side], self.links[side]
        while True:
            try:
                frame, address = sock.recvfrom(FRAME_BUFFER, socket.MSG_TRUNC)
            except BlockingIOError:
                return
            if address[2] == PACKET_OUTGOING:
                continue  # our own writes on this interface, seen on their way out
            if len(frame) > FRAME_BUFFER:
                self.oversize += 1
                continue
            due = link.due(now)
            if due is None:
                if link.cut:
                    self.cut += 1
                else:
                    self.lost += 1
                continue
            self.seq += 1
            heapq.heappush(self.queue, (due, self.seq, 1 - side, frame))

    def send_due(self, now: float) -> None:
        while self.queue and self.queue[0][0] <= now:
            _, _, out, frame = heapq.heappop(self.queue)
            try:
                self.socks[out].send(frame)
                self.relayed += 1
            except OSError:
                # A full device queue or a peer going down: lost, as on a wire.
                self.lost += 1

    def read_commands(self, stdin: int) -> bool:
        """Run the commands that arrived; False once stdin is closed."""
        data = os.read(stdin, 4096)
        if not data:
            return False
        self._commands += data
        while b"\n" in self._commands:
            line, self._commands = self._commands.split(b"\n", 1)
            print(self.command(line.decode()), flush=True)
        return True

    def run(self) -> None:
        stdin = sys.stdin.fileno()
        print("ready", flush=True)
        while True:
            now = time.monotonic()
            timeout = max(self.queue[0][0] - now, 0.0) if self.queue else None
            readable, _, _ = select.select([*self.socks, stdin], [], [], timeout)
            now = time.monotonic()
            for side, sock in enumerate(self.socks):
                if sock in readable:
                    self.receive(side, now)
            if stdin in readable and not self.read_commands(stdin):
                return
            self.send_due(time.monotonic())


# -- the parent's side -----------------------------------------------------------------


class RelayError(Exception):
    """Raised when the relay process refuses a command, does not answer, or is gone."""


class RelayProcess:
    """A relay between interfaces ``a`` and ``b``, running as a child process; each
    method returns once the relay has answered, with the change in force."""

    def __init__(self, a: str, b: str, *, seed: int | None = None) -> None:
        argv = [sys.executable, "-m", "tests.chaos.frame_relay", a, b]
        if seed is not None:
            argv += ["--seed", str(seed)]
        self._popen = subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self._buffer = b""
        try:
            self._answer("start")
        except BaseException:
            self.close()
            raise

    def impair(self, delay_ms: float, jitter_ms: float, loss: float, way: str = "both") -> None:
        """``way``: ``ab`` (frames from A), ``ba`` (frames from B) or ``both``."""
        self.command(f"impair {delay_ms:g} {jitter_ms:g} {loss:g} {way}")

    def command(self, line: str) -> str:
        stdin = self._popen.stdin
        assert stdin is not None
        try:
            stdin.write(line.encode() + b"\n")
            stdin.flush()
        except OSError as exc:
            raise RelayError(f"the frame relay is gone ({self._popen.poll()}): {exc}") from exc
        return self._answer(line)

    def _answer(self, what: str) -> str:
        """The relay's next line of output: its answer to ``what``."""
        stdout = self._popen.stdout
        assert stdout is not None
        fd = stdout.fileno()
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RelayError(f"the frame relay did not answer {what!r} in {ANSWER_TIMEOUT} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RelayError(f"the frame relay exited ({self._popen.wait()}) at {what!r}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer = line.decode()
        if answer.startswith("error"):
            raise RelayError(f"the frame relay refused {what!r}: {answer}")
        return answer

    def close(self) -> None:
        popen = self._popen
        if popen.stdin is not None:
            with contextlib.suppress(OSError):
                popen.stdin.close()  # the relay exits when its stdin closes
        try:
            popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
        if popen.stdout is not None:
            popen.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="one interface")
    parser.add_argument("b", help="the other interface")
    parser.add_argument("--seed", type=int, default=None, help="seed of the loss and jitter")
    args = parser.parse_args()
    Relay(args.a, args.b, args.seed).run()


if __name__ == "__main__":
    main()
