"""Encoding of payloads, results and stored task messages (msgpack via msgspec; no pickle).

A stored message is ``b"<max_retry>|<unique digest>|<priority>|<type length>|<key
length>|<step length>|<type><limit key><step>" + msgpack(Body)``, where ``step`` is
``<flow id>:<index>`` for a workflow's step ("" otherwise). The short plain-text header
is the only part a Lua script ever reads (the reaper needs ``max_retry`` and the unique
digest, flow control the priority, the type and the limit key, the end of an attempt the
step it reports to its workflow), so scripts never parse msgpack; the variable parts are
length-prefixed, so no byte of theirs is mistaken for a separator.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any, NamedTuple

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
    # A workflow step's dependencies' results (``ctx.inputs``), when it has a payload of
    # its own (without one, they are its payload).
    inputs: Any = None


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


def encode_message(
    max_retry: int,
    digest: str,
    body: Body,
    priority: int = 0,
    limit_key: str = "",
    step: str = "",
) -> bytes:
    if digest or step:
        head = _head(max_retry, digest, priority, body.type, limit_key, step)
    else:
        head = _plain_head(max_retry, priority, body.type, limit_key)
    return head + _encoder.encode(body)


def _head(max_retry: int, digest: str, priority: int, task_type: str, key: str, step: str) -> bytes:
    t, k, f = task_type.encode(), key.encode(), step.encode()
    head = b"%d|%s|%d|%d|%d|%d|" % (
        max_retry, digest.encode(), priority, len(t), len(k), len(f),
    )  # fmt: skip
    return head + t + k + f


@lru_cache(maxsize=1024)
def _plain_head(max_retry: int, priority: int, task_type: str, key: str) -> bytes:
    """The header of a task without a unique lock, outside a workflow: the same for all
    the tasks of a handler, so made once (a visible share of an enqueue otherwise)."""
    return _head(max_retry, "", priority, task_type, key, "")


class Header(NamedTuple):
    """The plain-text header of a stored message (what scripts read)."""

    max_retry: int
    digest: str  # "" = no unique lock
    priority: int
    limit_key: str  # "" = none
    step: str = ""  # "<flow id>:<index>" for a workflow's step, "" otherwise

    @property
    def flow_id(self) -> str | None:
        return self.step.rpartition(":")[0] or None


def split_message(data: bytes) -> tuple[bytes, bytes]:
    """A stored message's header (all a script reads) and its msgpack body."""
    parts = data.split(b"|", 6)
    if len(parts) == 7 and all(x.isdigit() for x in parts[2:6]):
        at = len(data) - len(parts[6]) + sum(int(x) for x in parts[3:6])
        return data[:at], data[at:]
    rest = data.split(b"|", 2)[2]
    return data[: len(data) - len(rest)], rest


def encode_body(body: Body) -> bytes:
    return _encoder.encode(body)


def decode_body(data: bytes) -> Body:
    return _body_decoder.decode(data)


def decode_message(data: bytes) -> tuple[Header, Body]:
    parts = data.split(b"|", 6)
    if len(parts) == 7 and all(x.isdigit() for x in parts[2:6]):
        max_retry, digest, priority, tlen, klen, flen, rest = parts
        t = int(tlen)
        k = t + int(klen)
        f = k + int(flen)
        header = Header(
            int(max_retry), digest.decode(), int(priority), rest[t:k].decode(),
            rest[k:f].decode(),
        )  # fmt: skip
        return header, _body_decoder.decode(rest[f:])
    # Stored by a version before flow control: "<max_retry>|<digest>|<body>" (a msgpack
    # body starts with an array byte, never a digit, so the two never mix up).
    max_retry, digest, body = data.split(b"|", 2)
    return Header(int(max_retry), digest.decode(), 0, ""), _body_decoder.decode(body)


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
