"""The pieces that bound bytes, alone: the native server's byte pools, the
FrameReader's handling of oversized frames, and the sizes a reply's budget
counts (which must never be less than what the reply encodes to)."""

from __future__ import annotations

import asyncio
import contextlib
import struct

import msgspec
import pytest

from conveyor.broker.replies import MAX_REASON, ReplySizes
from conveyor.cli import parser
from conveyor.core import wire
from conveyor.core.types import Delivery, Message, MessageState
from conveyor.core.validation import MAX_HEADERS_BYTES, MAX_KEY_LENGTH
from conveyor.server import native
from conveyor.server.budget import FLOOR, Pool, Replies
from conveyor.store.base import MESSAGE_OVERHEAD, delivery_size

MiB = 1 << 20

# -- the pools ------------------------------------------------------------------------


def test_a_connection_gets_at_most_its_share_and_the_total_is_kept() -> None:
    pool = Pool(total=64 * MiB, per_connection=32 * MiB)
    woken: list[str] = []
    a, b, c = (pool.share(lambda name=name: woken.append(name)) for name in "abc")
    assert a.try_take(40 * MiB, 1) == 32 * MiB  # capped by its own limit
    assert a.try_take(1, 1) == 0
    # b may take what is left of the total but the kept quarter...
    assert b.try_take(32 * MiB, 1) == 64 * MiB - 16 * MiB - 32 * MiB
    # ... and c, holding nothing, may still take up to the floor from it.
    assert c.try_take(32 * MiB, 1) == FLOOR
    assert c.try_take(1, 1) == 0
    assert pool.used == 48 * MiB + FLOOR
    a.release(8 * MiB)
    assert set(woken) >= {"a", "c"}  # c was refused for want of room: told of it
    assert c.try_take(MiB, MiB) == MiB


def test_a_share_refuses_less_than_its_minimum_and_a_waiter_is_woken() -> None:
    async def main() -> None:
        pool = Pool(total=64 * MiB, per_connection=16 * MiB)
        share = pool.share(lambda: None)
        assert share.try_take(16 * MiB, 16 * MiB) == 16 * MiB
        waiter = asyncio.ensure_future(share.take(4 * MiB, 2 * MiB))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        share.release(3 * MiB)
        assert await asyncio.wait_for(waiter, 1) == 3 * MiB
        share.close()
        assert pool.used == 0
        share.release(MiB)  # a late release after the close changes nothing
        assert pool.used == 0

    asyncio.run(main())


def test_waiting_requests_are_granted_in_turn_by_the_release() -> None:
    async def main() -> None:
        pool = Pool(total=64 * MiB, per_connection=16 * MiB)
        share = pool.share(lambda: None)
        share.force(16 * MiB)
        big = asyncio.ensure_future(share.take(10 * MiB, 10 * MiB))
        small = asyncio.ensure_future(share.take(MiB, MiB))
        gone = asyncio.ensure_future(share.take(MiB, MiB))
        await asyncio.sleep(0.01)
        share.release(5 * MiB)  # the first in turn does not fit yet: nobody jumps it
        await asyncio.sleep(0.01)
        assert not big.done() and not small.done()
        gone.cancel()
        share.release(6 * MiB)  # now it does, and the next fits too
        assert (await big, await small) == (10 * MiB, MiB)
        assert share.held == 16 * MiB and gone.cancelled()
        # A grant that its request, cancelled meanwhile, never takes up is freed.
        late = asyncio.ensure_future(share.take(MiB, MiB))
        await asyncio.sleep(0.01)
        share.release(MiB)
        late.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await late
        assert share.held == 15 * MiB == pool.used

    asyncio.run(main())


def test_replies_keep_what_the_reply_needs() -> None:
    async def main() -> None:
        pool = Pool(total=64 * MiB, per_connection=32 * MiB)
        replies = Replies(pool.share(lambda: None))
        got = await replies.reserve(16 * MiB, MiB)
        assert got == 16 * MiB
        replies.keep(got, 3 * MiB)
        assert (replies.held, pool.used) == (3 * MiB, 3 * MiB)
        replies.keep(MiB, 2 * MiB)  # needed more than it reserved: counted all the same
        assert (replies.held, pool.used) == (4 * MiB, 4 * MiB)
        assert replies.hand_over() == 4 * MiB and replies.held == 0

    asyncio.run(main())


# -- the frame reader --------------------------------------------------------------------


def test_an_oversized_frame_is_skipped_unbuffered_and_its_request_id_kept() -> None:
    reader = wire.FrameReader(1000, skip_oversized=True)
    big = msgspec.msgpack.encode([0, 70000, "enqueue", {"queue": "q", "x": b"x" * 5000}])
    data = struct.pack(">I", len(big)) + big + wire.request(7, "stats", {"queue": "q"})
    frames = []
    for i in range(0, len(data), 100):  # in small pieces: the rid comes before the body
        frames += reader.feed(data[i : i + 100])
        assert reader.buffered <= 200
    assert reader.oversized == [(70000, len(big))]
    assert frames == [[0, 7, "stats", {"queue": "q"}]]


def test_an_oversized_frame_that_is_no_request_has_no_id() -> None:
    reader = wire.FrameReader(10, skip_oversized=True)
    reader.feed(struct.pack(">I", 40) + msgspec.msgpack.encode("just a long string here!!")[:40])
    assert reader.oversized == [(None, 40)]


@pytest.mark.parametrize("rid", [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32, 2**63])
def test_the_request_id_is_read_from_the_first_bytes_whatever_its_width(rid: int) -> None:
    prefix = msgspec.msgpack.encode([0, rid, "op", {}])[:15]
    assert wire.request_id(prefix) == rid
    # An array of 16 or more items has a wider header.
    assert wire.request_id(msgspec.msgpack.encode([0, rid, *range(20)])[:15]) == rid


def test_without_skipping_an_oversized_frame_raises_and_pending_shows_the_next() -> None:
    reader = wire.FrameReader(100)
    assert reader.feed(struct.pack(">I", 50) + b"\x94") == []
    assert reader.pending == 50
    with pytest.raises(wire.FrameTooLarge):
        wire.FrameReader(100).feed(struct.pack(">I", 101))


def test_a_limit_leaves_the_rest_buffered() -> None:
    reader = wire.FrameReader(64)
    data = wire.request(1, "hello", {}) + wire.request(2, "x" * 100, {})
    got = reader.feed_sized(data, limit=1)
    assert [f[0][1] for f in got] == [1]
    reader.max_frame = 1000  # raised after the handshake
    assert [f[1] for f in reader.feed(b"")] == [2]


# -- what a reply counts ------------------------------------------------------------------

# The widest text of each kind: characters that escape to 6 bytes in JSON,
# and 4-byte characters in MessagePack.
WIDE = "\U0001f600"
HEADERS_JSON = {("\x01" * 1000 + str(i)): "\x02" * 1000 for i in range(MAX_HEADERS_BYTES // 2004)}
HEADERS_WIDE = {(WIDE * 1000 + str(i)): WIDE * 1000 for i in range(MAX_HEADERS_BYTES // 2004)}


@pytest.mark.parametrize("headers", [HEADERS_JSON, HEADERS_WIDE, {}])
def test_a_delivery_encodes_to_no_more_than_it_counts(headers: dict[str, str]) -> None:
    stored = msgspec.json.encode(headers) if headers else b""
    assert len(stored) <= ReplySizes.of(0).delivery - MESSAGE_OVERHEAD
    delivery = Delivery(
        id="0" * 26,
        queue="q" * 200,
        body=b"b" * 1000,
        headers=headers,
        priority=9,
        group=WIDE * MAX_KEY_LENGTH,
        attempts=2**62,
        max_attempts=2**62,
        token=2**63 - 1,
        deadline=1e300,
        lease=1e300,
        enqueued_at=1e300,
    )
    encoded = len(msgspec.msgpack.encode(delivery))
    assert encoded <= delivery_size(1000, len(stored))
    assert len(msgspec.json.encode(delivery)) > 0


def test_a_dead_letter_encodes_to_no_more_than_it_counts() -> None:
    error, reason = WIDE * MAX_REASON, "\x03" * MAX_REASON
    stored = msgspec.json.encode(HEADERS_WIDE)
    letter = Message(
        id="0" * 26,
        queue="q" * 200,
        state=MessageState.DEAD,
        body=b"b" * 1000,
        headers=HEADERS_WIDE,
        priority=9,
        group=WIDE * MAX_KEY_LENGTH,
        dedup_key=WIDE * MAX_KEY_LENGTH,
        attempts=2**62,
        max_attempts=2**62,
        enqueued_at=1e300,
        available_at=1e300,
        expires_at=1e300,
        last_error=error,
        dead_reason=reason,
        dead_at=1e300,
    )
    counted = delivery_size(1000, len(stored)) + len(error.encode()) + len(reason.encode())
    assert len(msgspec.msgpack.encode(letter)) <= counted
    assert counted <= ReplySizes.of(1000).dead_letter


def test_the_default_reply_fits_the_default_frame_and_holds_the_largest_message() -> None:
    sizes = ReplySizes.of(1 << 20)
    assert native.FRAME_MARGIN + (16 << 20) <= wire.DEFAULT_MAX_FRAME
    assert sizes.dead_letter < 16 << 20


def test_the_serve_command_defaults_are_the_servers() -> None:
    args = parser().parse_args(["serve"])
    assert args.max_connections == native.DEFAULT_MAX_CONNECTIONS
    assert args.handshake_timeout == native.DEFAULT_HANDSHAKE_TIMEOUT
    assert args.max_connection_mib << 20 == native.DEFAULT_CONNECTION_BYTES
    assert args.max_total_mib << 20 == native.DEFAULT_TOTAL_BYTES
