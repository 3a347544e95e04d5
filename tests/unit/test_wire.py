"""The native protocol's framing and codec without sockets (docs/protocol.md,
core/wire.py): frames as bytes, cut out of a stream however it arrives, and
a length over the limit refused before its body is read."""

from __future__ import annotations

import struct

import msgspec
import pytest

from conveyor.core import wire
from conveyor.core.errors import LeaseLost


def test_a_frame_is_a_big_endian_length_then_messagepack() -> None:
    payload = msgspec.msgpack.encode([wire.REPLY, 7, {"ok": True}])
    assert wire.reply(7, {"ok": True}) == struct.pack(">I", len(payload)) + payload
    assert wire.HEARTBEAT_FRAME == b"\x00\x00\x00\x02\x91\x04"
    assert wire.PREAMBLE == b"CNVY\x01"


def test_each_kind_of_frame_decodes_to_its_documented_array() -> None:
    reader = wire.FrameReader()
    data = b"".join(
        (
            wire.encode((wire.PUSH, 3, ["d"])),
            wire.encode((wire.SUB_END, 3, "queue_not_found", "gone")),
            wire.request(1, "ack", {"id": "x"}),
            wire.reply(1, None),
            wire.error(2, LeaseLost("stale")),
            wire.HEARTBEAT_FRAME,
        )
    )
    assert reader.feed(data) == [
        [3, 3, ["d"]],
        [5, 3, "queue_not_found", "gone"],
        [0, 1, "ack", {"id": "x"}],
        [1, 1, None],
        [2, 2, "lease_lost", "stale"],
        [4],
    ]
    assert reader.buffered == 0


def test_frames_come_out_whole_however_the_bytes_are_cut() -> None:
    frames = [wire.request(n, "op", {"n": n, "pad": "x" * n}) for n in range(1, 6)]
    stream = b"".join(frames)
    for cut in (1, 3, 4, 5, 7, len(stream)):
        reader = wire.FrameReader()
        got = []
        for start in range(0, len(stream), cut):
            got += reader.feed(stream[start : start + cut])
        assert [f[1] for f in got] == [1, 2, 3, 4, 5], cut
        assert reader.buffered == 0


def test_an_unfinished_frame_waits_in_the_buffer() -> None:
    frame = wire.reply(9, "done")
    reader = wire.FrameReader()
    assert reader.feed(frame[:3]) == []  # not even the length yet
    assert reader.buffered == 3
    assert reader.feed(frame[3:-1]) == []
    assert reader.buffered == len(frame) - 1
    assert reader.feed(frame[-1:] + frame[:4]) == [[1, 9, "done"]]
    assert reader.buffered == 4  # the next frame's length, kept


def test_a_length_at_the_limit_is_read_and_one_over_is_refused_before_its_body() -> None:
    body = msgspec.msgpack.encode([wire.REPLY, 1, "x" * 20])
    assert wire.FrameReader(max_frame=len(body)).feed(wire.reply(1, "x" * 20)) == [[1, 1, "x" * 20]]
    reader = wire.FrameReader(max_frame=len(body) - 1)
    with pytest.raises(wire.FrameTooLarge) as caught:
        reader.feed(struct.pack(">I", len(body)))  # the length alone is enough
    assert caught.value.code == "frame_too_large"
    assert f"frame of {len(body)} bytes exceeds the limit of {len(body) - 1}" in str(caught.value)
    assert isinstance(caught.value, wire.ProtocolError)
    with pytest.raises(wire.FrameTooLarge):
        wire.FrameReader().feed(b"\xff\xff\xff\xff")


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"\xc1", "undecodable frame: "),  # 0xc1 is never used in MessagePack
        (msgspec.msgpack.encode({"kind": 1}), "a frame is an array that starts with its kind"),
        (msgspec.msgpack.encode([]), "a frame is an array that starts with its kind"),
        (msgspec.msgpack.encode(["1", 2]), "a frame is an array that starts with its kind"),
        (msgspec.msgpack.encode(7), "a frame is an array that starts with its kind"),
    ],
)
def test_a_frame_that_is_not_an_array_starting_with_its_kind_is_refused(
    payload: bytes, says: str
) -> None:
    with pytest.raises(wire.ProtocolError) as caught:
        wire.FrameReader().feed(struct.pack(">I", len(payload)) + payload)
    assert caught.value.code == "protocol_error"
    assert says in caught.value.message


def test_the_protocol_errors_have_stable_codes() -> None:
    assert (wire.Unauthorized("x").code, wire.UnknownOperation("x").code) == (
        "unauthorized",
        "unknown_operation",
    )
