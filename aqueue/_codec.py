"""Encoding of payloads, results and stored task messages (msgpack via msgspec; no pickle).

A stored message is ``b"<max_retry>|<unique digest>|" + msgpack(Body)``. The short
plain-text header is the only part a Lua script ever reads (the reaper needs
``max_retry`` and the unique digest), so scripts never parse user data.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

import msgspec

from .errors import InvalidPayload, PayloadTooLarge


class Body(msgspec.Struct, array_like=True):
    """The part of a stored task that never changes after enqueue."""

    type: str
    payload: msgspec.Raw
    timeout: float  # seconds, 0 = none
    deadline: int  # epoch ms, 0 = none
    retention: float  # seconds
    enqueued_at: int  # epoch ms
    headers: dict[str, str] | None = None


_encoder = msgspec.msgpack.Encoder()
_body_decoder = msgspec.msgpack.Decoder(Body)
_any_decoder = msgspec.msgpack.Decoder()
_NONE = _encoder.encode(None)


def encode_payload(payload: object, limit: int) -> bytes:
    """Encode a payload, refusing what msgspec cannot encode and what is over ``limit``."""
    if payload is None:
        return _NONE
    try:
        data = _encoder.encode(payload)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidPayload(
            f"payload {_short(payload)} cannot be encoded with msgspec: {exc}"
        ) from None
    if len(data) > limit:
        raise PayloadTooLarge(
            f"payload of {len(data)} bytes is over the limit of {limit} bytes "
            "(Client(max_payload_bytes=...))"
        )
    return data


def encode_message(max_retry: int, digest: str, body: Body) -> bytes:
    return b"%d|%s|" % (max_retry, digest.encode()) + _encoder.encode(body)


def decode_message(data: bytes) -> tuple[int, str, Body]:
    max_retry, digest, rest = data.split(b"|", 2)
    return int(max_retry), digest.decode(), _body_decoder.decode(rest)


def encode_value(value: object) -> bytes:
    return _encoder.encode(value)


def decode_value(data: bytes | msgspec.Raw | None) -> Any:
    if data is None:
        return None
    return _any_decoder.decode(data)


@lru_cache(maxsize=512)
def decoder_for(tp: Any) -> msgspec.msgpack.Decoder[Any]:
    """One decoder per payload type, built once: building one is the costly part."""
    return msgspec.msgpack.Decoder(tp)


def decode_payload(raw: msgspec.Raw, tp: Any) -> Any:
    """Decode a stored payload into the handler's annotated type.

    ``bytes`` gets raw bytes: the enqueued bytes themselves when the payload was bytes,
    else the msgpack encoding of whatever was enqueued.
    """
    if tp is bytes:
        data = bytes(raw)
        if data[:1] in (b"\xc4", b"\xc5", b"\xc6"):
            return _any_decoder.decode(data)
        return data
    return decoder_for(tp).decode(raw)


def unique_digest(task_type: str, payload: bytes) -> str:
    """The unique-lock identity of (type, encoded payload) within one queue."""
    h = hashlib.blake2b(task_type.encode(), digest_size=16)
    h.update(b"\0")
    h.update(payload)
    return h.hexdigest()


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
