"""Where a ``redis://``, ``rediss://`` or ``unix://`` URL points, and how to log in.

aqueue's own connections (``_wire``) are set up from this, not from redis-py's parse of
the URL, so that what they do does not change with redis-py's release. redis-py's pool,
which carries every command that is not on the hot path, is still made by
``ConnectionPool.from_url`` (public API); ``Endpoint.redis_py_options`` hands it the
settings whose default redis-py changed between releases, so that both kinds of
connection verify a TLS server the same way.

A URL whose query names anything else (redis-py accepts many socket and retry options)
gets no ``Endpoint``: all its traffic then goes through redis-py, which understands
those options, a little slower.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from ..errors import InvalidOption

# Query parameters aqueue's own connections honour; anything else is redis-py's alone.
_QUERY = frozenset(
    {
        "db",
        "protocol",
        "client_name",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
    }
)
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class TLS:
    """How to verify the server: a certificate is required and its name checked unless
    the URL says otherwise (``ssl_cert_reqs=none|optional``, ``ssl_check_hostname``)."""

    cert_reqs: ssl.VerifyMode = ssl.CERT_REQUIRED
    check_hostname: bool = True
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_certs)
        ctx.check_hostname = self.check_hostname
        ctx.verify_mode = self.cert_reqs
        if self.certfile:
            ctx.load_cert_chain(self.certfile, self.keyfile)
        return ctx


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One server: a TCP address (with optional TLS) or a unix socket path."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    tls: TLS | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    client_name: str | None = None

    def redis_py_options(self) -> dict[str, object]:
        """Keyword arguments for redis-py's ``from_url`` that pin what aqueue decided:
        redis-py 5.x did not check a TLS server's host name by default, 6.x and later
        do. The URL's own query still wins, as ``from_url`` applies it last."""
        if self.tls is None:
            return {}
        return {"ssl_check_hostname": self.tls.check_hostname}


def endpoint(url: str) -> Endpoint | None:
    """The endpoint of a plain server URL, or None when redis-py must handle it alone
    (Sentinel, Cluster, or a query option aqueue's connections do not know)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        return None
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    bad = f"invalid URL {redacted(url)!r}"
    # Checked whoever ends up handling the URL: redis-py reads a path that is not a
    # number (redis://host/abc) as database 0, silently.
    db = _db(parts.path if parts.scheme != "unix" else "", query.get("db"), bad)
    try:
        port = parts.port
    except ValueError:
        raise InvalidOption(f"{bad}: the port must be a number from 0 to 65535") from None
    if not set(query) <= _QUERY or query.get("protocol", "2") not in ("2", "3"):
        return None
    tls = _tls(query, bad) if parts.scheme == "rediss" else None
    return Endpoint(
        host=unquote(parts.hostname or "localhost"),
        port=port or 6379,
        path=unquote(parts.path) if parts.scheme == "unix" else None,
        tls=tls,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        client_name=query.get("client_name") or None,
    )


def _db(path: str, query: str | None, bad: str) -> int:
    text = query if query is not None else path.strip("/")
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()):
        where = "?db=" if query is not None else "the path"
        raise InvalidOption(f"{bad}: the database ({where}) must be a number, got {text!r}")
    return int(text)


def _tls(query: dict[str, str], bad: str) -> TLS:
    reqs = query.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise InvalidOption(
            f"{bad}: ssl_cert_reqs must be none, optional or required, got {reqs!r}"
        )
    check = query.get("ssl_check_hostname")
    if check is not None and check.lower() not in _TRUE | _FALSE:
        raise InvalidOption(f"{bad}: ssl_check_hostname must be true or false, got {check!r}")
    cert_reqs = _CERT_REQS[reqs]
    # A name is checked only against a verified certificate (ssl refuses otherwise).
    checked = cert_reqs == ssl.CERT_REQUIRED and (check is None or check.lower() in _TRUE)
    return TLS(
        cert_reqs=cert_reqs,
        check_hostname=checked,
        ca_certs=query.get("ssl_ca_certs") or None,
        certfile=query.get("ssl_certfile") or None,
        keyfile=query.get("ssl_keyfile") or None,
    )


def redacted(url: str) -> str:
    """The URL with any password replaced, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
