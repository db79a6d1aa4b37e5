"""Who may see the dashboard (``AuthMiddleware``) and proof that a POST came from one of
its own pages (``Csrf``).

Auth guards every route, static assets included: basic credentials, or a bearer token
(which a browser can also send as the password of basic auth, any user name). CSRF uses
a signed double-submit cookie: the cookie holds a random nonce, each form carries
HMAC(secret, nonce). A page on another site can make the browser send the cookie, but
can neither read it nor compute the signature, so its forged POST is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import InvalidOption

Auth = tuple[str, str] | str

CSRF_COOKIE = "aqueue_csrf"
CSRF_FIELD = "csrf"


def check_auth(auth: object) -> Auth | None:
    """Return ``auth`` if it is None, a non-empty token, or a (user, password) pair."""
    if auth is None:
        return None
    if isinstance(auth, str) and auth:
        return auth
    if isinstance(auth, tuple) and len(auth) == 2 and all(isinstance(x, str) and x for x in auth):
        return (auth[0], auth[1])
    raise InvalidOption(
        "auth must be None, a bearer token (non-empty str) or a (user, password) pair of "
        f"non-empty strings, got a {type(auth).__name__}"
    )


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def allowed(auth: Auth, header: str | None) -> bool:
    """Whether an ``Authorization`` header satisfies ``auth``."""
    if not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer":
        return isinstance(auth, str) and _same(value, auth)
    if scheme != "basic":
        return False
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    if not sep:
        return False
    if isinstance(auth, str):  # a token doubles as the password, for browsers
        return _same(password, auth)
    # Compare both, always: the time taken does not tell which one was wrong.
    return _same(user, auth[0]) & _same(password, auth[1])


class AuthMiddleware:
    """Answer 401 to any HTTP request without the right credentials."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            header = headers.get(b"authorization", b"").decode("latin-1")
            if not allowed(self.auth, header):
                body = b"authentication required\n"
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            (b"www-authenticate", b'Basic realm="aqueue", charset="UTF-8"'),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class Csrf:
    """Signs and checks CSRF tokens with a secret made when the dashboard is created."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    @staticmethod
    def new_nonce() -> str:
        return secrets.token_urlsafe(24)

    def token(self, nonce: str) -> str:
        return hmac.new(self._secret, nonce.encode(), hashlib.sha256).hexdigest()

    def valid(self, nonce: str | None, token: str | None) -> bool:
        if not nonce or not token:
            return False
        return _same(self.token(nonce), token)
