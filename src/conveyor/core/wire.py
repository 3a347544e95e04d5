"""The native protocol's framing and codec (docs/protocol.md), without I/O.

A connection starts with the client's 5-byte preamble ``b"CNVY"`` + version.
After it, both sides exchange frames: a 4-byte big-endian length, then that
many bytes of MessagePack holding an array whose first item is the kind:

    [0, rid, op, args]        request (client -> server)
    [1, rid, result]          reply
    [2, rid, code, message]   error reply (rid 0: about the connection)
    [3, sub, deliveries]      deliveries pushed for subscription ``sub``
    [4]                       heartbeat
    [5, sub, code, message]   subscription ``sub`` ended (queue deleted...)

``FrameReader`` cuts frames out of a byte stream and refuses a length over
its limit before reading the body, so a hostile length prefix costs nothing:
it raises FrameTooLarge, or (the server, once the handshake is done) reads
the request id from the frame's first bytes and drops the rest of it as it
comes, without buffering it, so that the request alone can be refused.
"""

from __future__ import annotations

import gc
import struct
from itertools import compress
from typing import Any

import msgspec

from conveyor.core.errors import (
    ConveyorError,
    FrameTooLarge,
    ProtocolError,
    ReplyTooLarge,
    TooManyConnections,
    Unauthorized,
    UnknownOperation,
)

__all__ = [
    "DEFAULT_MAX_FRAME",
    "ERROR",
    "HEARTBEAT",
    "HEARTBEAT_FRAME",
    "MAGIC",
    "MAX_DEPTH",
    "PREAMBLE",
    "PUSH",
    "REPLY",
    "REQUEST",
    "SUB_END",
    "VERSION",
    "FrameReader",
    # The protocol's errors, declared with every other in core/errors.py and
    # named here too, where older code imports them from.
    "FrameTooLarge",
    "ProtocolError",
    "ReplyTooLarge",
    "TooManyConnections",
    "Unauthorized",
    "UnknownOperation",
    "decode",
    "encode",
    "error",
    "nested_deeper",
    "reply",
    "request",
    "request_id",
]

MAGIC = b"CNVY"
VERSION = 1
PREAMBLE = MAGIC + bytes([VERSION])
DEFAULT_MAX_FRAME = 16 * 1024 * 1024 + 64 * 1024
# Arrays and maps nest at most this deep in one frame (the frame's own array
# is level 1); a deeper frame is refused before anything walks it.
MAX_DEPTH = 64
_CONTAINERS = frozenset({list, dict, tuple})

REQUEST, REPLY, ERROR, PUSH, HEARTBEAT, SUB_END = 0, 1, 2, 3, 4, 5

_LENGTH = struct.Struct(">I")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def encode(frame: Any) -> bytes:
    """A frame as bytes on the wire: length prefix + MessagePack."""
    payload = _encoder.encode(frame)
    return _LENGTH.pack(len(payload)) + payload


def request(rid: int, op: str, args: dict[str, Any]) -> bytes:
    return encode((REQUEST, rid, op, args))


def reply(rid: int, result: Any) -> bytes:
    return encode((REPLY, rid, result))


def error(rid: int, exc: ConveyorError) -> bytes:
    return encode((ERROR, rid, exc.code, exc.message))


HEARTBEAT_FRAME = encode((HEARTBEAT,))


class FrameReader:
    """Feed it bytes as they come; it yields whole decoded frames.

    ``skip_oversized``: a frame over the limit does not raise; its request id
    is read from its first bytes (None if it has none) and kept, with its
    length, in ``oversized``, and the rest of it is dropped as it arrives."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, *, skip_oversized: bool = False) -> None:
        self.max_frame = max_frame
        self.skip_oversized = skip_oversized
        self.oversized: list[tuple[int | None, int]] = []
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversized frame still to drop

    def feed(self, data: bytes) -> list[list[Any]]:
        return [frame for frame, _ in self.feed_sized(data)]

    def feed_sized(self, data: bytes, limit: int | None = None) -> list[tuple[list[Any], int]]:
        """Whole frames with their lengths; at most ``limit`` of them (the
        rest stays buffered for the next call, which may pass b"")."""
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return []
            data, self._skip = data[self._skip :], 0
        self._buf += data
        frames: list[tuple[list[Any], int]] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4 and (limit is None or len(frames) < limit):
            (length,) = _LENGTH.unpack_from(buf, pos)
            have = len(buf) - pos - 4
            if length > self.max_frame:
                if not self.skip_oversized:
                    raise FrameTooLarge(
                        f"frame of {length} bytes exceeds the limit of {self.max_frame}"
                    )
                peek = min(_PEEK, length)
                if have < peek:
                    break  # its request id is not here yet
                self.oversized.append((request_id(bytes(buf[pos + 4 : pos + 4 + peek])), length))
                if have >= length:
                    pos += 4 + length
                    continue
                self._skip = length - have
                pos = len(buf)
                break
            if have < length:
                break
            payload = bytes(buf[pos + 4 : pos + 4 + length])
            pos += 4 + length
            frames.append((decode(payload), length))
        del buf[:pos]
        return frames

    @property
    def pending(self) -> int:
        """The length of the frame whose first bytes are buffered (0: none,
        or one over the limit, which is never buffered)."""
        if len(self._buf) < 4:
            return 0
        (length,) = _LENGTH.unpack_from(self._buf, 0)
        return length if length <= self.max_frame else 0

    @property
    def buffered(self) -> int:
        """Bytes held for frames not yet whole (the bound on them is tested)."""
        return len(self._buf)


# Bytes that hold a request's array header, kind and id, whatever their widths.
_PEEK = 15
_UINT_WIDTHS = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}


def request_id(prefix: bytes) -> int | None:
    """The rid of a request frame ``[0, rid, ...]`` from its first bytes
    alone; None if they are not those of a request."""
    if not prefix:
        return None
    first = prefix[0]
    if 0x90 <= first <= 0x9F:
        at = 1
    elif first in (0xDC, 0xDD):
        at = 3 if first == 0xDC else 5
    else:
        return None
    if len(prefix) < at + 2 or prefix[at] != REQUEST:
        return None
    tag = prefix[at + 1]
    if tag <= 0x7F:
        return tag
    width = _UINT_WIDTHS.get(tag)
    if width is None or len(prefix) < at + 2 + width:
        return None
    return int.from_bytes(prefix[at + 2 : at + 2 + width], "big")


def decode(payload: bytes) -> list[Any]:
    try:
        frame = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from None
    except RecursionError:  # msgspec's own guard, far deeper than MAX_DEPTH
        raise ProtocolError(f"a frame nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(frame, list) or not frame or not isinstance(frame[0], int):
        raise ProtocolError("a frame is an array that starts with its kind")
    # A frame shorter than MAX_DEPTH bytes cannot nest deeper.
    if len(payload) > MAX_DEPTH and nested_deeper(frame, MAX_DEPTH):
        raise ProtocolError(f"a frame nested deeper than {MAX_DEPTH} levels")
    return frame


def nested_deeper(value: object, limit: int) -> bool:
    """Whether the arrays and maps of a decoded document nest more than
    ``limit`` levels deep (``value`` itself is level 1).

    Level by level, without recursing: gc.get_referents lists, in C, what the
    containers of one level hold (a list's items, a dict's values and any
    keys that are not strings, a tuple's items: the decoders' array keys),
    and the containers among them make the next level. Cheap enough for
    every frame: no Python code runs per message, only per level."""
    level = [value] if type(value) in _CONTAINERS else []
    for _ in range(limit):
        if not level:
            return False
        held = gc.get_referents(*level)
        level = list(compress(held, map(_CONTAINERS.__contains__, map(type, held))))
    return bool(level)
