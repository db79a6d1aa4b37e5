"""How a worker rides out a server it cannot use: the capped backoff between tries, the
"back" event that ends every waiter's backoff at once, and what goes to the log.

An operator needs to know three things about the connection, without a line per retry:
that the server is gone, that it is back (and how long it was gone), and, while it stays
away or keeps flapping, that this is still so. The log policy (docs/operations.md,
"Server outages in the worker's log"):

- the first failure logs one WARNING: "lost the server (...)", or "waiting for the
  server (...)" when it has not answered once yet (a worker started before its server);
- the first success after that logs "server reachable again after N s";
- a failure within ``flap_window`` of coming back is a flap, not a new outage: nothing
  is logged for it;
- while the server stays away or keeps flapping, one reminder at most every
  ``remind_every`` seconds, with the reconnects and failed calls since the last line:
  "connection to the server is flapping: ..." or "server still unreachable after ...";
- once the connection has held for ``flap_window`` after flaps, one line says so.

``Outage`` depends on nothing but a logger and a clock, so any part that talks to the
server can be handed one; the clock is injectable so that tests can walk the policy
through minutes of outage without waiting.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable

import anyio
import redis.exceptions as rexc

from .._redis.broker import is_refusal

# The backoff between tries during an outage starts here and doubles up to the cap.
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
# At most one reminder per this many seconds while the server stays away or flaps.
REMIND_EVERY = 30.0

# What the log last told the operator about the connection.
_UP = "up"  # nothing to report: never failed, or stable again
_DOWN = "down"  # lost, or still unreachable
_BACK = "back"  # reachable again, recently: a failure now is a flap
_FLAPPING = "flapping"


class Outage:
    """The connection to the server as the parts of one worker see it.

    Each part reports the fate of its server calls: ``await failed(exc)`` after a call
    that could not reach the server (this logs per the policy, then waits the backoff),
    ``ok()`` after one that did (a few attribute reads while nothing changes: the hot
    path calls it).
    """

    def __init__(
        self,
        log: logging.Logger,
        *,
        max_backoff: float = MAX_BACKOFF,
        remind_every: float = REMIND_EVERY,
        flap_window: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.max_backoff = max_backoff
        self.remind_every = remind_every
        self.flap_window = remind_every if flap_window is None else flap_window
        self.clock = clock
        self._up = True  # the last call reached the server (assumed before any call)
        self._ever_up = False
        self._told = _UP
        # True while up and nothing is left to tell: ``ok()`` returns at once.
        self._calm = False
        self._down_since = 0.0  # start of the current run of failures
        self._up_since = 0.0  # start of the current run of successes
        self._last_line = 0.0
        self._failures = 0  # failed calls since the last line
        self._reconnects = 0  # down -> up since the last line
        self._last_error = ""
        self._backoff = FIRST_BACKOFF
        self._back: anyio.Event | None = None

    @property
    def down(self) -> bool:
        """True from a failed call until the next successful one."""
        return not self._up

    async def failed(self, exc: BaseException, sleep: float | None = None) -> None:
        """Record a call that could not reach the server, then wait before the caller
        tries again: the backoff (or ``sleep``), cut short when any other call finds
        the server back."""
        delay = self.failure(exc)
        if self._back is None:
            self._back = anyio.Event()
        back = self._back
        with anyio.move_on_after(delay if sleep is None else sleep):
            await back.wait()

    def failure(self, exc: BaseException) -> float:
        """Record a failed call and log what the policy says; return the backoff."""
        now = self.clock()
        self._failures += 1
        self._last_error = str(exc) or type(exc).__name__
        self._calm = False
        if not self._up:
            self._backoff = min(self._backoff * 2, self.max_backoff)
            self._remind(now)
            return self._backoff
        self._up = False
        self._down_since = now
        self._backoff = FIRST_BACKOFF
        if self._told == _UP or now - self._up_since >= self.flap_window:
            self._say(now, _DOWN, self._lost_line())
        else:
            self._remind(now)  # a flap: only a due reminder
        return self._backoff

    def ok(self) -> None:
        """Record a call that reached the server."""
        if self._calm:
            return
        now = self.clock()
        if not self._up:
            self._up = True
            self._up_since = now
            self._reconnects += 1
            if self._back is not None:
                self._back.set()  # every waiter tries again now
                self._back = None
            if self._told == _DOWN:
                gone = now - self._down_since
                if self._ever_up:
                    self._say(now, _BACK, f"server reachable again after {gone:.1f} s")
                else:
                    self._say(now, _BACK, f"server reachable after waiting {gone:.1f} s")
            else:
                self._remind(now)
        elif self._told != _UP and now - self._up_since >= self.flap_window:
            if self._told == _FLAPPING or self._failures:
                self._say(now, _UP, f"connection to the server stable again{self._counts()}")
            self._told = _UP
        self._ever_up = True
        self._calm = self._up and self._told == _UP

    def _lost_line(self) -> str:
        what = "lost the server" if self._ever_up else "waiting for the server"
        return f"{what} ({self._last_error}); retrying with backoff up to {self.max_backoff:g} s"

    def _remind(self, now: float) -> None:
        """A reminder, if one is due and there is news: failures since the last line."""
        if not self._failures or now - self._last_line < self.remind_every:
            return
        error = f"; last error: {self._last_error}"
        if self._reconnects:
            self._say(
                now,
                _FLAPPING,
                f"connection to the server is flapping: {self._counts(bare=True)} in the "
                f"last {now - self._last_line:.0f} s{error}",
            )
        else:
            still = "server still unreachable" if self._ever_up else "still waiting for the server"
            gone = now - self._down_since
            self._say(now, _DOWN, f"{still} after {gone:.0f} s{self._counts()}{error}")

    def _counts(self, bare: bool = False) -> str:
        parts = []
        if self._reconnects:
            parts.append(_plural(self._reconnects, "reconnect"))
        parts.append(_plural(self._failures, "failed call"))
        text = " and ".join(parts)
        return text if bare else f" ({text} since the last report)"

    def _say(self, now: float, told: str, line: str) -> None:
        self.log.warning("%s", line)
        self._told = told
        self._last_line = now
        self._failures = self._reconnects = 0


def _plural(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


# -- does waiting help? ----------------------------------------------------------------

# Error replies that say "not now", which waiting can fix: the broker's refusals (full,
# busy, loading, a cluster in trouble; ``is_refusal``), a demoted master, and a blocked
# command released by a role change.
_BETWEEN_ROLES = ("READONLY", "UNBLOCKED")
# What no amount of waiting fixes: refused credentials or permissions, a database the
# server does not have, a peer that does not speak the protocol, a TLS certificate that
# does not verify.
_PERMANENT_TYPES = (
    ssl.SSLCertVerificationError,
    rexc.AuthenticationError,
    rexc.AuthenticationWrongNumberOfArgsError,
    rexc.NoPermissionError,
    rexc.InvalidResponse,
)
_PERMANENT_TEXT = (
    "noauth",
    "wrongpass",
    "noperm",
    "invalid password",
    "invalid username-password",
    "db index is out of range",
)


def waiting_helps(exc: BaseException) -> bool:
    """Whether a server error may go away by itself (the server is down, restarting,
    still loading its data, unreachable for now) rather than need a change of URL,
    credentials or server. Judged on the error and the errors that caused it.

    An error reply not known to be transient (``ERR unknown command``: a server
    without a command aqueue needs) counts as permanent. A host name that does not
    resolve counts as transient: in a container network it does so until the server's
    container exists.
    """
    error: BaseException | None = exc
    for _ in range(10):  # a cause chain is short; a cycle must not hang us
        if error is None:
            return True
        text = str(error).lower()
        if isinstance(error, _PERMANENT_TYPES) or any(w in text for w in _PERMANENT_TEXT):
            return False
        if isinstance(error, rexc.ResponseError) and not (
            is_refusal(error)
            or isinstance(error, rexc.ReadOnlyError)
            or str(error).startswith(_BETWEEN_ROLES)
        ):
            return False
        error = error.__cause__
    return True
