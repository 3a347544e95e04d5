"""The native protocol's client side without sockets (client/connection.py):
bytes in, bytes out. The handshake and the frames cut anywhere, replies in
any order, a lost connection failing the calls in flight, limits checked
before anything is sent, heartbeats, and when a lost call is sent again."""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.client.connecting import Attempts, BrokerUnreachable, ConnectionLost
from conveyor.client.connection import Answer, Connection, Lost, Resend
from conveyor.core import wire
from conveyor.core.errors import BodyTooLarge, ConveyorError, InvalidArgument, QueueNotFound
from conveyor.core.types import NewMessage

WELCOME = {"server": "test", "heartbeat": 4.0, "max_body": 100, "max_batch": 3, "max_frame": 300}


class Pushes:
    def __init__(self) -> None:
        self.got: list[tuple[int, object]] = []

    def pushed(self, sub: int, deliveries: list[Any]) -> None:
        self.got.append((sub, deliveries))

    def ended(self, sub: int, error: ConveyorError) -> None:
        self.got.append((sub, error))


def connection(pushes: Pushes | None = None, **info: object) -> Connection:
    """A connection whose handshake is done, with WELCOME (and ``info``)."""
    sink = pushes or Pushes()
    conn = Connection("broker:7710", on_push=sink.pushed, on_end=sink.ended)
    conn.feed(wire.reply(0, {**WELCOME, **info}), now=0.0)
    assert conn.ready
    return conn


def cut(data: bytes, at: list[int]) -> list[bytes]:
    """``data`` in pieces, cut at the offsets ``at`` (any, in any order)."""
    points = sorted({0, len(data), *(i % (len(data) + 1) for i in at)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# -- the handshake -------------------------------------------------------------------


def test_hello_is_the_preamble_and_a_hello_request() -> None:
    conn = Connection("broker:7710", token="secret", name="me")
    data = conn.hello()
    assert data.startswith(wire.PREAMBLE)
    (frame,) = wire.FrameReader().feed(data[len(wire.PREAMBLE) :])
    assert frame == [wire.REQUEST, 0, "hello", {"version": 1, "token": "secret", "name": "me"}]


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_a_hello_reply_cut_anywhere_and_what_follows_it(at: list[int]) -> None:
    """The reply may come byte by byte, and frames may follow it in the same
    chunk: they are read once the handshake is done."""
    pushes = Pushes()
    conn = Connection("broker:7710", on_push=pushes.pushed)
    stream = wire.reply(0, WELCOME) + wire.encode((wire.PUSH, 1, [{"id": "m"}]))
    for piece in cut(stream, at):
        assert not pushes.got
        conn.feed(piece, now=1.0)
    assert conn.ready and conn.info == WELCOME
    assert conn.heartbeat == 4.0 and conn.beat_every == 2.0
    assert pushes.got == [(1, [{"id": "m"}])]


def test_an_http_port_is_named_as_such() -> None:
    conn = Connection("broker:7711")
    with pytest.raises(wire.ProtocolError, match=r"broker:7711 is an HTTP port.*7710"):
        conn.feed(b"HTTP/1.1 400 Bad Request\r\n\r\n", now=0.0)


def test_a_peer_speaking_another_protocol_is_refused() -> None:
    conn = Connection("broker:22")
    conn.feed(b"SSH-", now=0.0)  # four bytes: not enough to tell yet
    with pytest.raises(wire.ProtocolError, match="does not speak Conveyor's native protocol"):
        conn.feed(b"2.0-OpenSSH\r\n", now=0.0)


def test_a_refused_hello_raises_the_brokers_error() -> None:
    conn = Connection("broker:7710", token="wrong")
    with pytest.raises(wire.Unauthorized, match="bad token"):
        conn.feed(wire.error(0, wire.Unauthorized("bad token")), now=0.0)
    assert not conn.ready


# -- replies -------------------------------------------------------------------------


@given(
    order=st.permutations(range(6)),
    at=st.lists(st.integers(min_value=0, max_value=100_000), max_size=20),
)
def test_replies_in_any_order_and_cut_anywhere_complete_their_calls(
    order: list[int], at: list[int]
) -> None:
    conn = connection()
    answers = [Answer() for _ in range(6)]
    rids = [conn.request("stats", {"queue": f"q{i}"}, a)[0] for i, a in enumerate(answers)]
    assert rids == [1, 2, 3, 4, 5, 6] and conn.in_flight == 6
    stream = b"".join(
        wire.error(rids[i], QueueNotFound(f"no q{i}")) if i == 3 else wire.reply(rids[i], i * 10)
        for i in order
    )
    for piece in cut(stream, at):
        conn.feed(piece, now=1.0)
    assert conn.in_flight == 0
    for i, answer in enumerate(answers):
        assert answer.done()
        if i == 3:
            with pytest.raises(QueueNotFound, match="no q3"):
                answer.value()
        else:
            assert answer.value() == i * 10


def test_a_reply_for_a_call_no_longer_awaited_is_dropped() -> None:
    conn = connection()
    answer = Answer()
    rid, _ = conn.request("result", {"id": "x"}, answer)
    conn.forget(rid)
    conn.feed(wire.reply(rid, "late") + wire.reply(999, "never asked"), now=1.0)
    assert not answer.done() and conn.in_flight == 0


def test_pushes_and_ended_subscriptions_go_to_their_sinks() -> None:
    pushes = Pushes()
    conn = connection(pushes)
    deliveries = [{"id": "m1", "token": 1}]
    stream = wire.encode((wire.PUSH, 7, deliveries)) + wire.encode(
        (wire.SUB_END, 7, "queue_not_found", "queue q was deleted")
    )
    for byte in range(len(stream)):
        conn.feed(stream[byte : byte + 1], now=1.0)
    (sub, got), (ended_sub, error) = pushes.got
    assert (sub, got) == (7, deliveries)
    assert ended_sub == 7 and isinstance(error, QueueNotFound)


# -- errors about the connection -----------------------------------------------------------


def test_a_frame_error_from_the_broker_is_raised_to_drop_the_connection() -> None:
    conn = connection()
    answer = Answer()
    conn.request("enqueue", {"queue": "q", "messages": []}, answer)
    with pytest.raises(wire.FrameTooLarge):
        conn.feed(wire.encode((wire.ERROR, 0, "frame_too_large", "frame of 9 bytes")), now=1.0)
    # The transport drops the connection, failing the call with that error:
    # never a reason to send it again.
    conn.fail("frame_too_large", wire.FrameTooLarge("frame of 9 bytes"))
    with pytest.raises(wire.FrameTooLarge):
        answer.value()


def test_another_error_about_the_connection_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn = connection()
    with caplog.at_level(logging.WARNING, logger="conveyor.client"):
        conn.feed(wire.encode((wire.ERROR, 0, "broker_closed", "shutting down")), now=1.0)
    assert "broker_closed: shutting down" in caplog.text


def test_a_frame_longer_than_the_brokers_max_frame_is_a_frame_error() -> None:
    conn = connection()
    with pytest.raises(wire.FrameTooLarge):
        conn.feed(wire.reply(1, "x" * 400), now=1.0)


def test_a_lost_connection_fails_every_call_in_flight_to_be_sent_again() -> None:
    conn = connection()
    answers = [Answer() for _ in range(3)]
    for answer in answers:
        conn.request("stats", {"queue": "q"}, answer)
    conn.fail("closed by the broker")
    assert conn.in_flight == 0
    for answer in answers:
        with pytest.raises(Lost, match="closed by the broker"):
            answer.value()
    assert len({id(a.error) for a in answers}) == 3  # one error each: raised in its own call


# -- limits ---------------------------------------------------------------------------


def test_requests_over_the_announced_limits_raise_and_nothing_is_registered() -> None:
    conn = connection()
    answer = Answer()
    big = NewMessage(body=b"x" * 101)
    with pytest.raises(BodyTooLarge, match="limit of 100 bytes"):
        conn.request("enqueue", {"queue": "q", "messages": [big]}, answer)
    with pytest.raises(InvalidArgument, match=r"limit of 3 \(max_batch\)"):
        conn.request("enqueue", {"queue": "q", "messages": [NewMessage(body=b"")] * 4}, answer)
    with pytest.raises(InvalidArgument, match="frame limit of 300 bytes"):
        conn.request(
            "enqueue", {"queue": "q", "messages": [NewMessage(body=b"x" * 100)] * 3}, answer
        )
    with pytest.raises(BodyTooLarge, match="result of 101 bytes"):
        conn.request("ack", {"items": [{"id": "m", "token": 1, "result": b"r" * 101}]}, answer)
    assert conn.in_flight == 0
    # The limits are the broker's: at them, a request goes, with the first id.
    rid, data = conn.request(
        "enqueue", {"queue": "q", "messages": [NewMessage(body=b"x" * 100)]}, answer
    )
    assert rid == 1 and len(data) - 4 <= 300


def test_no_limit_is_assumed_where_the_broker_announced_none() -> None:
    conn = Connection("broker:7710")
    conn.feed(wire.reply(0, {"server": "old"}), now=0.0)
    _, data = conn.request(
        "enqueue", {"queue": "q", "messages": [NewMessage(body=b"x" * 5000)]}, Answer()
    )
    assert len(data) > 5000


# -- heartbeats and resending -----------------------------------------------------------------


def test_heartbeats_until_the_broker_is_silent_for_three_intervals() -> None:
    conn = connection()  # heartbeat 4 s, last heard at 0
    assert conn.beat(now=11.9) == wire.HEARTBEAT_FRAME
    conn.feed(wire.HEARTBEAT_FRAME, now=12.0)  # anything from the broker counts
    assert conn.beat(now=23.9) == wire.HEARTBEAT_FRAME
    with pytest.raises(Lost, match=r"silent for 12\.1s"):
        conn.beat(now=24.1)


def test_a_lost_call_is_sent_again_after_a_growing_pause_until_its_deadline() -> None:
    resend = Resend("enqueue", deadline=100.0)
    pauses = [resend.after(Lost("reset"), now=0.0) for _ in range(4)]
    assert 0 < pauses[0] < pauses[-1] <= 2.0 * 1.5
    with pytest.raises(
        ConnectionLost, match=r"enqueue: connection lost \(reset\) and not regained"
    ):
        resend.after(Lost("reset"), now=99.99)


# -- attempts over every address ------------------------------------------------------------


def test_attempts_round_the_addresses_and_say_why_each_failed() -> None:
    addresses = [("h1", 7710), ("h2", 7710)]
    attempts = Attempts(addresses, deadline=time.monotonic() - 1)  # one round, no more
    tried = []
    for attempt in attempts:
        tried.append(attempt.address)
        assert attempt.pause == 0.0 and attempt.timeout > 0
        with attempt:
            raise ConnectionRefusedError if attempt.host == "h1" else TimeoutError
    assert tried == addresses
    error = attempts.unreachable()
    assert isinstance(error, BrokerUnreachable)
    assert "h1:7710 (connection refused), h2:7710 (timed out)" in error.message


def test_an_attempt_raises_what_a_new_attempt_cannot_mend() -> None:
    attempts = Attempts([("h1", 7710), ("h2", 7710)], deadline=time.monotonic() + 60)
    with pytest.raises(wire.Unauthorized):  # a wrong token stays wrong at every address
        for attempt in attempts:
            with attempt:
                raise wire.Unauthorized("bad token")
