"""The native server's last-resort guard and its settings, in process, with a
frame limit small enough to reach: a list that would pass the frame limit is
refused with ``reply_too_large`` for its request, and the connection goes on;
limits that do not fit together are refused when the server is made."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from conveyor.broker.broker import Broker, BrokerConfig
from conveyor.core import wire
from conveyor.core.errors import InvalidArgument
from conveyor.server.native import FRAME_MARGIN, NativeServer
from conveyor.store.sqlite.store import SqliteStore

MAX_REPLY = 1_200_000  # the least a 1 KiB max_body allows, rounded up
MAX_FRAME = MAX_REPLY + FRAME_MARGIN
MiB = 1 << 20


class Raw:
    """A native-protocol client over asyncio streams, frame by frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = wire.FrameReader(1 << 30)
        self.rid = 0

    async def call(self, op: str, args: Any) -> list[Any]:
        self.rid += 1
        self.writer.write(wire.request(self.rid, op, args))
        while True:
            got = self.frames.feed(await self.reader.read(1 << 16))
            for frame in got:
                if frame[0] in (wire.REPLY, wire.ERROR) and frame[1] == self.rid:
                    return frame


async def test_a_list_over_the_frame_limit_gets_reply_too_large_and_the_connection_goes_on() -> (
    None
):
    config = BrokerConfig(max_body=1024, max_reply_bytes=MAX_REPLY)
    async with Broker(SqliteStore(None, durability="memory"), config, monitor=False) as broker:
        for n in range(4000):  # about 390 bytes each in the list: 1.5 MB
            await broker.create_queue(f"{n:05d}" + "q" * 195)
        server = NativeServer(
            broker,
            port=0,
            max_frame=MAX_FRAME,
            max_connection_bytes=2 * MiB,
            max_total_bytes=4 * MiB,
        )
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(wire.PREAMBLE)
            raw = Raw(reader, writer)
            assert (await raw.call("hello", {"version": wire.VERSION}))[0] == wire.REPLY
            refused = await raw.call("queues", {})
            assert refused[0] == wire.ERROR and refused[2] == "reply_too_large", refused[:3]
            assert str(MAX_FRAME) in refused[3]
            stats = await raw.call("stats", {"queue": "00007" + "q" * 195})
            assert stats[0] == wire.REPLY and stats[2]["ready"] == 0
            # A frame over the limit is refused for its request alone.
            writer.write(struct.pack(">I", MAX_FRAME + 1) + wire.request(99, "x", {})[4:])
            writer.write(b"\0" * (MAX_FRAME + 1 - len(wire.request(99, "x", {})[4:])))
            ok = await raw.call("get_queue", {"queue": "00001" + "q" * 195})
            assert ok[0] == wire.REPLY
            writer.close()
        finally:
            await server.stop()


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"max_frame": 1 << 20}, "must hold the largest reply"),
        ({"max_connection_bytes": 8 * MiB}, "must hold a whole frame"),
        ({"max_total_bytes": 40 * MiB}, "at least twice"),
        ({"max_connections": 0}, "max_connections"),
        ({"handshake_timeout": 0}, "handshake_timeout"),
    ],
)
async def test_limits_that_do_not_fit_together_are_refused(
    settings: dict[str, Any], complaint: str
) -> None:
    async with Broker(SqliteStore(None, durability="memory"), monitor=False) as broker:
        with pytest.raises(InvalidArgument, match=complaint):
            NativeServer(broker, port=0, **settings)
