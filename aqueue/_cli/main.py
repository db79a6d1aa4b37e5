"""The ``aqueue`` command: ``worker``, ``dev``, ``metrics`` and ``dash`` here, the admin
commands (``stats``, ``queue``, ``task``, ``workers``, ``limits``, ``cron``) in
``admin``.

Exit codes: 0 ok, 1 error (server unreachable, ...), 2 usage (bad arguments, a
MODULE:ATTR that does not name a Mux or Worker).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import ipaddress
import logging
import os
import signal
import socket
import sys
import traceback
from typing import Any, NoReturn

import anyio

from .._mux import Mux
from .._redis.urls import check_url
from .._version import __version__
from .._worker import health
from .._worker.worker import Worker
from ..errors import AqueueError, InvalidOption
from . import admin
from .args import log_level, positive_int, positive_seconds, queue_name, queue_weight

log = logging.getLogger("aqueue.cli")


def port(text: str) -> int:
    """A TCP port number, 1-65535."""
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {text!r}")
    return value


class UsageError(Exception):
    pass


def cmd_metrics(args: argparse.Namespace) -> int:
    try:
        from ..metrics import serve
    except ImportError as exc:  # a core install: say which extra is missing
        raise AqueueError(str(exc)) from None
    url = args.url or os.environ.get("AQUEUE_URL") or "redis://localhost:6379/0"
    serve(url, args.port, args.host, queues=args.queue, interval=args.interval)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def cmd_dash(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..web import dashboard
    except ImportError as exc:  # a core install: say which extra is missing
        raise AqueueError(
            f"aqueue dash needs the web extra ({exc}): pip install 'aqueue-redis[web]'"
        ) from None
    token = os.environ.get("AQUEUE_DASH_TOKEN") or None
    password = args.password or os.environ.get("AQUEUE_DASH_PASSWORD") or None
    if bool(args.user) != bool(password):
        raise UsageError("--user and --password (or $AQUEUE_DASH_PASSWORD) go together")
    if args.user and token:
        raise UsageError("give either --user/--password or $AQUEUE_DASH_TOKEN, not both")
    auth: tuple[str, str] | str | None = (args.user, password) if args.user and password else token
    if auth is None and not _is_loopback(args.host):
        raise UsageError(
            f"refusing to serve the dashboard on {args.host} without authentication: "
            "set --user and --password, or $AQUEUE_DASH_TOKEN, or bind to 127.0.0.1"
        )
    url = args.url or os.environ.get("AQUEUE_URL") or "redis://localhost:6379/0"
    app = dashboard(url, read_only=not args.allow_actions, auth=auth)
    sock = _listen(args.host, args.port)  # before the URL is printed: it must be true
    mode = "actions enabled" if args.allow_actions else "read-only"
    print(f"aqueue dash: http://{args.host}:{args.port}/ ({mode})", flush=True)
    # uvicorn stops gracefully on SIGTERM, then raises the signal again for the previous
    # handler: make that a clean exit (0), like SIGINT, instead of death by signal.
    signal.signal(signal.SIGTERM, _interrupt)
    config = uvicorn.Config(app, log_level=args.log_level.lower())
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """The dashboard's listening socket, bound here rather than by uvicorn: a port in use
    (or an address this host does not have) is then one error line and exit 1, where
    uvicorn logs its own error after the URL was printed and exits 3."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        return socket.create_server(address, family=family)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = "the port is in use (choose another with --port)"
        else:
            reason = exc.strerror or str(exc)
        raise AqueueError(f"cannot serve the dashboard on {host}:{port}: {reason}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aqueue", description="asyncio-native background jobs on Redis and Valkey"
    )
    parser.add_argument("--version", action="version", version=f"aqueue {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def worker_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("app", metavar="MODULE:ATTR", help="a Mux or a Worker, e.g. app.tasks:mux")
        p.add_argument(
            "--concurrency", "-c", type=positive_int, help="handlers run at once (default 10)"
        )
        p.add_argument(
            "--queue", "-q", action="append", type=queue_weight, metavar="NAME=WEIGHT",
            help="a queue to serve, with its weight (repeatable; default: default=1)",
        )  # fmt: skip
        p.add_argument(
            "--strict", action="store_true", help="strict priority: heaviest queue first"
        )
        p.add_argument("--no-scheduler", action="store_true", help="do not run the cron scheduler")
        p.add_argument("--shutdown-timeout", type=float, help="seconds handlers get at shutdown")
        p.add_argument(
            "--log-level", default="INFO", type=log_level, help="logging level (default INFO)"
        )
        p.add_argument(
            "--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
            help="event loop: uvloop when installed (aqueue-redis[fast]) by default",
        )  # fmt: skip

    w = sub.add_parser(
        "worker", help="run a worker", description="Run a worker until SIGTERM/SIGINT."
    )
    worker_flags(w)
    w.add_argument(
        "--url", default=None, help="server URL (default: $AQUEUE_URL or redis://localhost:6379/0)"
    )
    w.add_argument(
        "--processes", "-p", type=positive_int, default=None, metavar="N",
        help="run N worker processes under a supervisor that restarts them (default: one, "
        "in this process)",
    )  # fmt: skip
    w.add_argument(
        "--health-port", type=port, default=None, metavar="PORT",
        help="serve GET /livez and /readyz on this port (for Kubernetes probes)",
    )  # fmt: skip
    w.add_argument(
        "--health-host", default=None, metavar="HOST",
        help=f"address the health probes bind (default {health.DEFAULT_HOST}: the pod's IP)",
    )  # fmt: skip
    w.add_argument(
        "--worker-id", default=None, metavar="ID",
        help="a stable worker id (e.g. the pod's name): a restarted worker takes its "
        "predecessor's tasks back at once; with --processes N, ID-1 .. ID-N",
    )  # fmt: skip
    # A supervised child reports its health on this inherited pipe (supervisor.py).
    w.add_argument("--health-fd", type=int, default=None, help=argparse.SUPPRESS)
    d = sub.add_parser(
        "dev", help="embedded Valkey + worker in one process",
        description="Start an embedded Valkey server and a worker, for local development.",
    )  # fmt: skip
    worker_flags(d)
    d.add_argument("--port", type=port, help="port of the embedded server (default: a free one)")
    admin.add_commands(sub)
    m = sub.add_parser(
        "metrics",
        help="serve Prometheus metrics of the queues (aqueue-redis[prometheus])",
        description="Serve Prometheus gauges of the queues and their limits over HTTP until "
        "SIGTERM/SIGINT.",
    )
    m.add_argument("--url", default=None, help="server URL (default: $AQUEUE_URL)")
    m.add_argument("--port", type=port, default=9808, help="HTTP port (9808)")
    m.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    m.add_argument("--queue", "-q", action="append", type=queue_name, help="a queue (default: all)")
    m.add_argument(
        "--interval", type=positive_seconds, default=5.0, help="seconds between reads (5)"
    )
    m.add_argument("--log-level", default="INFO", type=log_level, help="logging level")
    w = sub.add_parser(
        "dash",
        help="serve the web dashboard (aqueue-redis[web])",
        description="Serve the web dashboard until SIGTERM/SIGINT. Read-only unless "
        "--allow-actions; auth by --user/--password or $AQUEUE_DASH_TOKEN (required to "
        "bind anything but loopback).",
    )
    w.add_argument("--url", default=None, help="server URL (default: $AQUEUE_URL)")
    w.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    w.add_argument("--port", type=port, default=8080, help="HTTP port (8080)")
    w.add_argument(
        "--allow-actions", action="store_true", help="enable pause/resume and task actions"
    )
    w.add_argument("--user", default=None, help="basic-auth user name")
    w.add_argument(
        "--password", default=None, help="basic-auth password (or $AQUEUE_DASH_PASSWORD)"
    )
    w.add_argument("--log-level", default="INFO", type=log_level, help="logging level")
    return parser


def load_app(spec: str) -> Mux | Worker:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"expected MODULE:ATTR, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import module {module_name!r}: {exc}") from exc
    except Exception as exc:  # the module itself fails: a SyntaxError, an error it raises
        raise UsageError(f"cannot import module {module_name!r}: {_import_error(exc)}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, (Mux, Worker)):
        raise UsageError(f"{spec!r} is a {type(obj).__name__}, not an aqueue Mux or Worker")
    return obj


def _import_error(exc: Exception) -> str:
    """One line: the error, and where in the user's code it was raised (a SyntaxError
    names its file and line itself)."""
    text = " ".join(str(exc).split()) or "(no message)"
    where = ""
    if not isinstance(exc, SyntaxError):
        tb = traceback.extract_tb(exc.__traceback__)
        frames = [f for f in tb if not f.filename.startswith("<")]  # not <frozen importlib>
        if frames:
            where = f" ({os.path.relpath(frames[-1].filename)}, line {frames[-1].lineno})"
    return f"{type(exc).__name__}: {text}{where}"


def make_worker(app: Mux | Worker, args: argparse.Namespace, url: str | None) -> Worker:
    changes: dict[str, Any] = {}
    if args.concurrency is not None:
        changes["concurrency"] = args.concurrency
    if args.queue:
        changes["queues"] = dict(args.queue)
    if args.strict:
        changes["strict_priority"] = True
    if args.no_scheduler:
        changes["scheduler"] = False
    if args.shutdown_timeout is not None:
        changes["shutdown_timeout"] = args.shutdown_timeout
    worker_id = getattr(args, "worker_id", None)
    if worker_id is not None and getattr(args, "processes", None) is None:
        changes["worker_id"] = worker_id  # with --processes, each child gets ID-<slot>
    try:
        if isinstance(app, Worker):
            return app.replace(url, **changes)
        return Worker(app, url or "redis://localhost:6379/0", **changes)
    except AqueueError as exc:  # a bad flag value (queue name, weight, ...) is usage
        raise UsageError(str(exc)) from None


def _use_uvloop(choice: str) -> bool:
    """uvloop for ``auto`` when it can be imported; ``uvloop`` insists on it."""
    if choice == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise UsageError(
                "--loop uvloop: uvloop is not installed (pip install 'aqueue-redis[fast]')"
            ) from None
        return False
    return True


def _run_worker(worker: Worker, loop: str = "auto", args: argparse.Namespace | None = None) -> int:
    uvloop = _use_uvloop(loop)
    logging.getLogger("aqueue.worker").info(
        "event loop: %s", "uvloop" if uvloop else "asyncio (default)"
    )
    options = {"use_uvloop": uvloop}
    port: int | None = getattr(args, "health_port", None)
    fd: int | None = getattr(args, "health_fd", None)
    if fd is not None:  # a supervised child: the supervisor serves the probes
        anyio.run(health.run_reporting, worker, health.PipeReport(fd), backend_options=options)
        return 0
    if port is None:
        anyio.run(worker.run, backend_options=options)
        return 0
    probe = health.Probe()
    host = getattr(args, "health_host", None) or health.DEFAULT_HOST
    server = health.HealthServer(host, port, probe).start()
    try:
        anyio.run(health.run_reporting, worker, probe.report, backend_options=options)
    finally:
        server.close()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    if args.health_host is not None and args.health_port is None:
        raise UsageError("--health-host needs --health-port")
    app = load_app(args.app)
    url = args.url or os.environ.get("AQUEUE_URL")
    worker = make_worker(app, args, url)  # usage errors surface here, not in N children
    if args.processes is not None and worker.options.get("worker_id") is not None:
        raise UsageError(
            "--processes: each process needs its own id; pass --worker-id ID (the "
            "processes get ID-1 .. ID-N) instead of the Worker's worker_id"
        )
    if args.processes is not None:
        from .supervisor import supervise

        _use_uvloop(args.loop)  # a usage error surfaces here, not in N children
        return supervise(args.processes, args, worker.shutdown_timeout)
    return _run_worker(worker, args.loop, args)


def cmd_dev(args: argparse.Namespace) -> int:
    from .._server import EmbeddedServer

    app = load_app(args.app)
    with EmbeddedServer(args.port) as server:
        os.environ["AQUEUE_URL"] = server.url
        print(f"aqueue dev: embedded Valkey at {server.url} (AQUEUE_URL is set)", flush=True)
        return _run_worker(make_worker(app, args, server.url), args.loop)


def _check_url(args: argparse.Namespace) -> None:
    """A server URL that cannot be parsed (a scheme aqueue does not know, a database or
    port that is not a number) is a usage error, exit 2, for every command that takes
    one, found before anything connects."""
    if "url" not in vars(args):  # `aqueue dev` makes its own
        return
    url = args.url or os.environ.get("AQUEUE_URL")
    if url:
        try:
            check_url(url)
        except InvalidOption as exc:
            raise UsageError(str(exc)) from None


def fail(message: str, code: int) -> NoReturn:
    print(f"aqueue: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    commands = {"worker": cmd_worker, "dev": cmd_dev, "metrics": cmd_metrics, "dash": cmd_dash}
    try:
        _check_url(args)
        if hasattr(args, "admin"):
            return admin.run(args)
        return commands[args.command](args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        fail(str(exc), 2)
    except AqueueError as exc:
        fail(str(exc), 1)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
