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
its limit before reading the body, so a hostile length prefix costs nothing.
"""

from __future__ import annotations

import gc
import struct
from itertools import compress
from typing import Any

import msgspec

from conveyor.core.errors import ConveyorError, register_error

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


@register_error
class ProtocolError(ConveyorError):
    """The peer broke the protocol: bad preamble, frame or handshake."""

    code = "protocol_error"


@register_error
class FrameTooLarge(ProtocolError):
    """A frame is longer than the receiver's maximum frame size."""

    code = "frame_too_large"


@register_error
class Unauthorized(ConveyorError):
    """The auth token is missing or wrong."""

    code = "unauthorized"


@register_error
class UnknownOperation(ConveyorError):
    """The request names an operation the server does not have."""

    code = "unknown_operation"


def encode(frame: Any) -> bytes:
    """A frame as bytes on the wire: length prefix + MessagePack."""
    payload = _encoder.encode(frame)
    return _LENGTH.pack(len(payload)) + payload


def encode_many(frames: list[Any]) -> bytes:
    return b"".join(encode(f) for f in frames)


def request(rid: int, op: str, args: dict[str, Any]) -> bytes:
    return encode((REQUEST, rid, op, args))


def reply(rid: int, result: Any) -> bytes:
    return encode((REPLY, rid, result))


def error(rid: int, exc: ConveyorError) -> bytes:
    return encode((ERROR, rid, exc.code, exc.message))


HEARTBEAT_FRAME = encode((HEARTBEAT,))


class FrameReader:
    """Feed it bytes as they come; it yields whole decoded frames."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._max = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[list[Any]]:
        self._buf += data
        frames = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4:
            (length,) = _LENGTH.unpack_from(buf, pos)
            if length > self._max:
                raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {self._max}")
            if len(buf) - pos - 4 < length:
                break
            body = bytes(buf[pos + 4 : pos + 4 + length])
            pos += 4 + length
            frames.append(decode(body))
        del buf[:pos]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buf)


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
