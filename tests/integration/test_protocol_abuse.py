"""The native protocol port under abuse, with raw sockets: garbage, bad
preambles, truncated and oversized frames, unknown operations, malformed
MessagePack; a client that stops reading; thousands of idle connections.
Each abuse gets an error frame or a closed connection, and the server keeps
serving a well-behaved client meanwhile and afterwards."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from integration_support import (
    RawConnection,
    ServerProcess,
    StartServer,
    msgpack,
    open_fds,
    wait_until,
)

import conveyor
from conveyor.core import wire
from requires import unavailable

HELLO = {"version": wire.VERSION, "token": None, "name": "abuser"}


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def error_codes(frames: list[Any]) -> list[str]:
    return [f[2] for f in frames if f[0] == wire.ERROR]


def assert_still_serving(server: ServerProcess, queue: str) -> None:
    """A normal client can still do a full round trip."""
    assert server.alive(), server.log_text()
    with conveyor.Client(server.url, timeout=10) as client:
        client.create_queue(queue)
        sent = client.enqueue(queue, b"still here")
        (got,) = client.receive(queue, wait=2)
        assert got.id == sent.id and got.body == b"still here"
        got.ack()


# -- bytes that cannot be framed: an error frame (where one can be sent), then closed ----

CLOSING_CASES: dict[str, tuple[Callable[[RawConnection], None], str | None]] = {
    # name: (what the client sends, the error code expected before the close)
    "random bytes": (lambda c: c.send(b"\x00garbage" + os.urandom(200)), "protocol_error"),
    "an HTTP request": (lambda c: c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "protocol_error"),
    "a wrong protocol version": (lambda c: c.send(b"CNVY\x02" + frame(b"\x90")), "protocol_error"),
    "a request before hello": (
        lambda c: c.send(wire.PREAMBLE + wire.request(1, "queues", {})),
        "protocol_error",
    ),
    "hello of another version": (
        lambda c: c.send(wire.PREAMBLE + wire.request(1, "hello", {**HELLO, "version": 99})),
        "protocol_error",
    ),
    "hello without arguments": (
        lambda c: c.send(wire.PREAMBLE + wire.encode((0, 1, "hello", "me"))),
        "protocol_error",
    ),
    "an oversized length prefix before hello": (
        lambda c: c.send(wire.PREAMBLE + b"\xff\xff\xff\xff" + b"x" * 100),
        "frame_too_large",
    ),
    "malformed MessagePack": (
        lambda c: (c.hello(), c.send(frame(b"\xc1\xc1\xc1"))),
        "protocol_error",
    ),
    "truncated MessagePack inside a whole frame": (
        lambda c: (c.hello(), c.send(frame(msgpack([0, 5, "queues", {}])[:-3]))),
        "protocol_error",
    ),
    "a frame that is not an array": (
        lambda c: (c.hello(), c.send(frame(msgpack("just a string")))),
        "protocol_error",
    ),
    "a truncated frame, then end of stream": (
        lambda c: (
            c.hello(),
            c.send(struct.pack(">I", 1000) + b"\x94\x00\x02"),
            c.sock.shutdown(socket.SHUT_WR),
        ),
        None,
    ),
}


@pytest.mark.parametrize("case", list(CLOSING_CASES))
def test_unframeable_input_closes_the_connection(
    server: ServerProcess, queue: str, case: str
) -> None:
    send, expected = CLOSING_CASES[case]
    with RawConnection(server.port) as conn:
        send(conn)
        frames = conn.read_to_eof(timeout=10)
    codes = error_codes(frames)
    if expected is not None:
        assert codes and codes[-1] == expected, frames
        message = next(f[3] for f in frames if f[0] == wire.ERROR and f[2] == expected)
        assert isinstance(message, str) and message
    assert_still_serving(server, queue)


# -- frames that decode but make no sense: an error for them, the connection stays -----


def test_unknown_operation_and_bad_frames_leave_the_connection_usable(
    server: ServerProcess, queue: str
) -> None:
    with RawConnection(server.port) as conn:
        info = conn.hello()
        assert info["server"] == "conveyor" and info["version"] == wire.VERSION

        reply = conn.call("frobnicate", {})
        assert reply[0] == wire.ERROR and reply[2] == "unknown_operation", reply
        assert conn.call(42, {})[2] == "unknown_operation"
        assert conn.call("enqueue", {"queue": 5})[2] == "invalid_argument"
        assert conn.call("enqueue", {"queue": queue, "messages": [], "bogus": 1})[2] == (
            "invalid_argument"
        )
        assert conn.call("stats", [1, 2, 3])[2] == "invalid_argument"
        assert conn.call("receive", {"queue": queue, "max": 2**63})[2] == "invalid_argument"
        assert conn.call("consume", {"queue": queue, "prefetch": 0})[2] == "invalid_argument"
        assert conn.call("ack", {"items": [{"id": "x" * 16, "token": "t"}]})[2] == (
            "invalid_argument"
        )
        assert isinstance(conn.call("queues", {}), list)  # a normal request is answered

        # Not a request: an error about the connection (rid 0), which stays open.
        for bad in ([9, 1, 2], [0, "rid", "queues", {}], [0, 1, "queues"], [1, 7, None]):
            conn.send(frame(msgpack(bad)))
            err = conn.read_until(lambda f: f[0] == wire.ERROR)
            assert err[1] == 0 and err[2] == "protocol_error", (bad, err)
        conn.send(wire.HEARTBEAT_FRAME)

        created = conn.call("create_queue", {"queue": queue, "settings": {}, "exist_ok": True})
        assert created["name"] == queue
        (enqueued,) = conn.call("enqueue", {"queue": queue, "messages": [{"body": b"raw"}]})
        (delivery,) = conn.call("receive", {"queue": queue, "max": 1})
        assert delivery["id"] == enqueued["id"] and delivery["body"] == b"raw"
        (outcome,) = conn.call("ack", {"items": [{"id": delivery["id"], "token": 999}]})
        assert outcome["ok"] is False and outcome["code"] == "lease_lost"
        outcome = conn.call("ack", {"items": [{"id": delivery["id"], "token": delivery["token"]}]})
        assert outcome == [{"ok": True}]
    assert_still_serving(server, queue)


def test_pipelined_requests_are_all_answered(server: ServerProcess, queue: str) -> None:
    with RawConnection(server.port) as conn:
        conn.hello()
        conn.call("create_queue", {"queue": queue, "settings": {}, "exist_ok": True})
        burst = b"".join(
            wire.request(100 + i, "enqueue", {"queue": queue, "messages": [{"body": b"%d" % i}]})
            for i in range(300)
        ) + wire.request(1000, "nope", {})
        conn.send(burst)
        answered: dict[int, Any] = {}
        while len(answered) < 301:
            f = conn.read_frame()
            assert f is not None
            if f[0] in (wire.REPLY, wire.ERROR):
                answered[f[1]] = f
        assert answered[1000][2] == "unknown_operation"
        assert all(answered[100 + i][0] == wire.REPLY for i in range(300))
        assert conn.call("stats", {"queue": queue})["ready"] == 300
        assert conn.call("purge", {"queue": queue}) == 300


def test_a_stalled_partial_frame_is_dropped_by_the_heartbeat(
    start_server: StartServer,
) -> None:
    """A client that sends half a frame and then nothing (no heartbeats) is
    closed for its silence (three heartbeat intervals), not kept forever and
    not for the half frame."""
    # Debug: the server logs a silent connection without a session there.
    server = start_server("--heartbeat", "0.5", "--log-level", "debug")
    with RawConnection(server.port, timeout=20) as conn:
        conn.hello()
        conn.send(struct.pack(">I", 500) + b"\x94\x00")
        port = conn.sock.getsockname()[1]
        assert error_codes(conn.read_to_eof(timeout=15)) == []
    wait_until(
        lambda: re.search(rf"127\.0\.0\.1:{port} silent for [\d.]+s: closing", server.log_text()),
        10,
        "the server to log why it closed the connection",
    )
    assert_still_serving(server, "after-stall")


# -- a client that stops reading ------------------------------------------------------

BIG = 256 * 1024
QUEUED = 640  # 160 MiB queued
RSS_BOUND_MIB = 64


def fill_big_queue(server: ServerProcess, queue: str) -> list[str]:
    ids: list[str] = []
    with conveyor.Client(server.url, timeout=30) as client:
        client.create_queue(queue, visibility_timeout=300)
        for _ in range(QUEUED // 16):
            batch = [os.urandom(BIG) for _ in range(16)]
            ids += [r.id for r in client.enqueue_many(queue, batch)]
    return ids


def peak_rss_growth_mib(server: ServerProcess, base_kib: int, seconds: float) -> float:
    peak = base_kib
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, server.rss_kib())
        time.sleep(0.03)
    return (peak - base_kib) / 1024


def stalled_reader(port: int) -> RawConnection:
    """A connection with a small receive buffer, whose writes time out
    (rather than block forever) once the server stops reading."""
    conn = RawConnection(port)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    conn.hello()
    conn.sock.settimeout(1.0)
    return conn


@pytest.mark.slow
def test_a_consumer_that_stops_reading_does_not_grow_the_server(
    start_server: StartServer,
) -> None:
    # A session timeout far beyond the wait below: only the closed
    # connection can release the stalled consumer's leases in time.
    server = start_server("--durability", "os", "--session-timeout", "60")
    queue = "big"
    ids = fill_big_queue(server, queue)
    base = server.rss_kib()

    conn = stalled_reader(server.port)
    try:
        conn.request("consume", {"queue": queue, "prefetch": 8, "sub": 1})

        def settle_blindly() -> None:
            # Acks of what it was surely sent (first deliveries have token 1),
            # without ever reading a push: credit flows, the socket does not.
            with contextlib.suppress(OSError):
                for i, message_id in enumerate(ids):
                    conn.send(wire.request(10 + i, "ack", {"items": [{"id": message_id,
                                                                      "token": 1}]}))  # fmt: skip

        thread = threading.Thread(target=settle_blindly, daemon=True)
        thread.start()
        growth = peak_rss_growth_mib(server, base, 4.0)
        assert growth < RSS_BOUND_MIB, (
            f"the server grew by {growth:.0f} MiB for a client that does not read"
            f" ({QUEUED * BIG >> 20} MiB queued)"
        )
        with conveyor.Client(server.url, timeout=10) as client:
            s = client.stats(queue)
            assert s.leased <= 8 + 8, s  # about one prefetch outstanding, not the queue
            assert s.ready + s.leased + s.acked_total == QUEUED, s
    finally:
        conn.close()
    # Its connection closed: its session ends and its leases are released.
    with conveyor.Client(server.url, timeout=10) as client:
        wait_until(lambda: client.stats(queue).leased == 0, 20, "the leases to be released")
        assert client.stats(queue).ready + client.stats(queue).acked_total == QUEUED
    assert server.alive()


@pytest.mark.slow
def test_a_client_that_pipelines_receives_and_reads_nothing_does_not_grow_the_server(
    start_server: StartServer,
) -> None:
    server = start_server("--durability", "os")
    queue = "big"
    fill_big_queue(server, queue)
    base = server.rss_kib()
    conn = stalled_reader(server.port)
    try:
        with contextlib.suppress(OSError):
            for _ in range(600):
                conn.request("receive", {"queue": queue, "max": 10})
        growth = peak_rss_growth_mib(server, base, 4.0)
        assert growth < RSS_BOUND_MIB, (
            f"the server grew by {growth:.0f} MiB for a client that does not read"
            f" ({QUEUED * BIG >> 20} MiB queued)"
        )
    finally:
        conn.close()


# -- many idle connections --------------------------------------------------------------

IDLE = 2000


@pytest.mark.slow
def test_two_thousand_idle_connections(start_server: StartServer) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = IDLE + 500
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            unavailable(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    try:
        # The server inherits the raised limit. Idle here means idle for as
        # long as the test takes: no handshake deadline, no heartbeat silence
        # closes a connection meanwhile (each is tested on its own).
        server = start_server(
            "--handshake-timeout", "600", "--heartbeat", "60", "--session-timeout", "120"
        )
        baseline_fds = open_fds(server.pid)
        socks: list[socket.socket] = []
        try:
            for i in range(IDLE):
                s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                if i % 2:  # half of them say hello, the others not even that
                    s.sendall(wire.PREAMBLE + wire.request(1, "hello", HELLO))
                socks.append(s)
            wait_until(
                lambda: open_fds(server.pid) >= baseline_fds + IDLE,
                10,
                "the server to accept every connection",
            )
            # Served while crowded (assert_still_serving's client gives up
            # after its own timeout): nobody waits behind the idle ones.
            assert_still_serving(server, "while-crowded")
            for s in socks[1:40:2]:  # the greeted ones got their hello reply
                s.settimeout(5)
                reader = wire.FrameReader()
                frames: list[Any] = []
                while not frames:
                    chunk = s.recv(65536)
                    assert chunk, "closed instead of answering hello"
                    frames = reader.feed(chunk)
                assert frames[0][0] == wire.REPLY and frames[0][2]["server"] == "conveyor"
        finally:
            for s in socks:
                s.close()
        assert server.alive(), server.log_text()
        # Every connection's resources go when it does.
        wait_until(
            lambda: open_fds(server.pid) <= baseline_fds + 10,
            15,
            "the server to close the idle connections",
        )
        assert_still_serving(server, "after-crowd")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
