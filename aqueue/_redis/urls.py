"""What a ``redis+sentinel://`` or ``redis+cluster://`` URL asks for, and the check of
any URL a Client, Worker or Inspector is given (``endpoint`` parses the others)."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import InvalidOption
from .endpoint import endpoint, redacted

_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
SENTINEL_PORT = 26379


def check_url(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in _SCHEMES:
        raise InvalidOption(
            f"unsupported URL {redacted(url)!r}: use redis://, rediss://, unix://, "
            f"redis+sentinel:// or redis+cluster://"
        )
    if scheme == "redis+sentinel":
        parse_sentinel_url(url)
    if scheme == "redis+cluster":
        parse_cluster_url(url)
    endpoint(url)  # a bad database number or TLS option fails here, not at first use
    return url


class SentinelURL:
    """``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[?db=N]``.

    The credentials are the master's (and its replicas'); the sentinels themselves are
    asked without them. The port of a sentinel defaults to 26379.
    """

    __slots__ = ("db", "password", "sentinels", "service", "username")

    def __init__(
        self,
        sentinels: list[tuple[str, int]],
        service: str,
        db: int,
        username: str | None,
        password: str | None,
    ) -> None:
        self.sentinels = sentinels
        self.service = service
        self.db = db
        self.username = username
        self.password = password


def _hosts(netloc: str, default_port: int, bad: str) -> tuple[list[tuple[str, int]], str, str]:
    """``[[user]:password@]host[:port][,host[:port]...]`` -> addresses, user, password."""
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    addresses: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, sep, port = item.rpartition(":")
        if not sep or "]" in port:  # no port, or the end of an [IPv6] address
            host, port = item, str(default_port)
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise InvalidOption(f"{bad}: expected host:port, got {item!r}")
        addresses.append((host, int(port)))
    return addresses, username, password


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """``redis+cluster://[[user]:password@]host[:port][,host[:port]...]``: the startup
    nodes (any few of the cluster's nodes) and the credentials."""
    parts = urlsplit(url)
    bad = f"invalid redis+cluster URL {redacted(url)!r}"
    nodes, username, password = _hosts(parts.netloc, 6379, bad)
    if parts.path.strip("/") or parts.query:
        raise InvalidOption(f"{bad}: a cluster has one database; give no path or query")
    return nodes, username or None, password or None


def parse_sentinel_url(url: str) -> SentinelURL:
    parts = urlsplit(url)
    bad = f"invalid redis+sentinel URL {redacted(url)!r}"
    sentinels, username, password = _hosts(parts.netloc, SENTINEL_PORT, bad)
    service = parts.path.strip("/")
    if not service or "/" in service:
        raise InvalidOption(f"{bad}: the path must be the service name, e.g. /mymaster")
    db = 0
    for key, _, value in (p.partition("=") for p in parts.query.split("&") if p):
        if key != "db" or not value.isdigit():
            raise InvalidOption(f"{bad}: unknown query parameter {key!r} (only db=N is accepted)")
        db = int(value)
    return SentinelURL(sentinels, service, db, username or None, password or None)
