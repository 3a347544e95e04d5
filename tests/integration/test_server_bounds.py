"""What each client can cost a real ``conveyor serve`` (issue 13, part 3), and
what it does with a frame over its limits.

Three abuses, each while a well-behaved client does small round trips
(enqueue, receive, ack) on its own connections:
  - clients that pipeline requests with big replies (1 MiB results, pages of
    1 MiB dead letters) and never read, and clients that send most of a
    16 MiB frame and stall: the server holds at most its byte limits
    (here --max-connection-mib 32 --max-total-mib 64: 64 MiB of requests and
    64 MiB of replies), and disconnects clients that take nothing of what it
    sends for three heartbeat intervals;
  - forty connections that never complete the handshake: each may send 16 KiB
    before it, and is closed after --handshake-timeout;
  - connections up to --max-connections: one more is refused with a typed
    error.
Each asserts the server's RSS growth (from /proc) within a stated bound and
the well-behaved client's median round trip within 100 ms (the issue's bound).
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from integration_support import (
    RawConnection,
    ServerProcess,
    StartServer,
    conveyor_cli,
    open_fds,
    wait_until,
)

import conveyor
from conveyor.core import wire
from conveyor.core.errors import error_for_code

MiB = 1 << 20
HELLO = {"version": wire.VERSION, "token": None, "name": "abuser"}
LIMITS = ("--durability", "os", "--max-connection-mib", "32", "--max-total-mib", "64")
SERVED_WITHIN = 0.1  # seconds: the bound on the well-behaved client's median
ABUSE_SECONDS = 4.0


class WellBehaved:
    """A client doing small round trips in a thread, each request timed."""

    def __init__(self, server: ServerProcess, queue: str) -> None:
        self.client = conveyor.Client(server.url, name="well-behaved", timeout=30)
        self.queue = queue
        self.samples: list[float] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.client.create_queue(queue)
        self._round_trip()  # connected and warm before the abuse begins
        self.samples.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _timed(self, call: Callable[[], Any]) -> Any:
        began = time.monotonic()
        value = call()
        self.samples.append(time.monotonic() - began)
        return value

    def _round_trip(self) -> None:
        sent = self._timed(lambda: self.client.enqueue(self.queue, b"small"))
        (got,) = self._timed(lambda: self.client.receive(self.queue, wait=5))
        assert got.id == sent.id
        self._timed(got.ack)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._round_trip()
                time.sleep(0.02)
        except BaseException as exc:
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> float:
        """Its median request time while it ran."""
        self._stop.set()
        self._thread.join(30)
        self.client.close()
        if self.error is not None:
            raise self.error
        assert len(self.samples) >= 10, self.samples
        return statistics.median(self.samples)


def peak_rss_growth_mib(server: ServerProcess, base_kib: int, seconds: float) -> float:
    peak = base_kib
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, server.rss_kib())
        time.sleep(0.03)
    return (peak - base_kib) / 1024


def quiet(conn: RawConnection) -> RawConnection:
    """A socket that will not read: a small receive buffer; writes give up
    after a second once the server stops reading."""
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    conn.sock.settimeout(1.0)
    return conn


def in_threads(jobs: list[Callable[[], None]]) -> list[threading.Thread]:
    def quietly(job: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            with contextlib.suppress(OSError):
                job()

        return run

    threads = [threading.Thread(target=quietly(job), daemon=True) for job in jobs]
    for t in threads:
        t.start()
    return threads


@pytest.fixture
def bounded(start_server: StartServer) -> ServerProcess:
    return start_server(*LIMITS, "--handshake-timeout", "3")


@contextlib.contextmanager
def sockets() -> Iterator[list[RawConnection]]:
    opened: list[RawConnection] = []
    try:
        yield opened
    finally:
        for conn in opened:
            conn.close()


# -- 1. big replies asked for and never read; big frames half sent -------------------

REPLY_ABUSERS = 6
FRAME_ABUSERS = 6
# What the server may hold for them: 64 MiB of replies and 64 MiB of requests
# counted in wire bytes; a reply is in memory up to three times while it is
# built and written (messages, the encoded frame, the socket's buffer), and a
# request twice (its frame and its decoded arguments).
RSS_BOUND_BIG_MIB = 3 * 64 + 2 * 64 + 64


def prepare_big_replies(server: ServerProcess, queue: str) -> tuple[str, str]:
    """A 1 MiB result and 20 dead letters of 1 MiB: (the result's id, the queue)."""
    big = b"r" * (MiB - 100)
    with conveyor.Client(server.url, timeout=60) as client:
        client.create_queue(queue, visibility_timeout=300)
        for _ in range(3):
            client.enqueue_many(queue, [big] * 7)
        got = []
        while len(got) < 21:
            got += client.receive(queue, max=21, wait=1)
        got[0].ack(result=big)
        for d in got[1:]:
            d.dead("poison")
        return got[0].id, queue


def pipeline_big_replies(conn: RawConnection, result_id: str, queue: str) -> None:
    for i in range(512):
        if i % 2:
            conn.request("dead_letters", {"queue": queue, "limit": 100})
        else:
            conn.request("result", {"id": result_id})


def half_a_big_frame(conn: RawConnection) -> None:
    conn.send(struct.pack(">I", 16 * MiB))
    chunk = b"\x00" * MiB
    for _ in range(15):
        conn.send(chunk)


@pytest.mark.slow
def test_big_replies_never_read_and_big_frames_half_sent_stay_within_the_limits(
    bounded: ServerProcess, queue: str
) -> None:
    result_id, big_queue = prepare_big_replies(bounded, queue + "-big")
    baseline_fds = open_fds(bounded.pid)
    good = WellBehaved(bounded, queue)
    base = bounded.rss_kib()
    with sockets() as opened:
        jobs: list[Callable[[], None]] = []
        for _ in range(REPLY_ABUSERS):
            conn = quiet(RawConnection(bounded.port))
            conn.hello()
            opened.append(conn)
            jobs.append(lambda c=conn: pipeline_big_replies(c, result_id, big_queue))
        for _ in range(FRAME_ABUSERS):
            conn = quiet(RawConnection(bounded.port))
            conn.hello()
            opened.append(conn)
            jobs.append(lambda c=conn: half_a_big_frame(c))
        good.start()
        in_threads(jobs)
        growth = peak_rss_growth_mib(bounded, base, ABUSE_SECONDS)
        median = good.stop()
        assert growth < RSS_BOUND_BIG_MIB, (
            f"the server grew by {growth:.0f} MiB (bound {RSS_BOUND_BIG_MIB} MiB) for"
            f" {REPLY_ABUSERS} clients asking for 512 MiB of replies each and"
            f" {FRAME_ABUSERS} sending 15 MiB of a frame"
        )
        assert median < SERVED_WITHIN, f"median request {median * 1000:.0f} ms during the abuse"
        print(f"\nRSS growth {growth:.0f} MiB, well-behaved median {median * 1000:.1f} ms")
        # Clients that read nothing (and stalled frames) are let go.
        wait_until(
            lambda: open_fds(bounded.pid) <= baseline_fds + 3,
            30,
            "the server to disconnect the clients that do not read",
        )
    assert bounded.alive(), bounded.log_text()


@pytest.mark.slow
def test_big_enqueues_pipelined_without_reading_hold_at_most_the_request_limit(
    bounded: ServerProcess, queue: str
) -> None:
    """Whole 15 MiB enqueues, pipelined on four connections that never read:
    at most 64 MiB of them are read at once; the rest wait in the sockets."""
    with conveyor.Client(bounded.url, timeout=30) as client:
        client.create_queue(queue)
    frame = wire.request(
        1, "enqueue", {"queue": queue, "messages": [{"body": b"e" * (MiB - 100)}] * 15}
    )
    base = bounded.rss_kib()
    with sockets() as opened:
        for _ in range(4):
            conn = quiet(RawConnection(bounded.port))
            conn.hello()
            opened.append(conn)
        in_threads([lambda c=c: [c.send(frame) for _ in range(40)] for c in opened])
        growth = peak_rss_growth_mib(bounded, base, ABUSE_SECONDS)
    # 64 MiB of frames, each decoded once more, and SQLite's pages for the
    # batches being written.
    assert growth < 3 * 64 + 64, f"the server grew by {growth:.0f} MiB"
    print(f"\nRSS growth {growth:.0f} MiB")
    assert bounded.alive(), bounded.log_text()


# -- 2. connections that never complete the handshake ---------------------------------

SILENT = 40
RSS_BOUND_SILENT_MIB = 32  # 40 x 16 KiB, and the connections themselves


@pytest.mark.slow
def test_forty_connections_without_a_handshake_are_bounded_then_closed(
    bounded: ServerProcess, queue: str
) -> None:
    good = WellBehaved(bounded, queue)
    base = bounded.rss_kib()
    with sockets() as opened:
        # The most a hello may be, all but its last byte: held until the deadline.
        for _ in range(SILENT):
            conn = RawConnection(bounded.port)
            conn.send(wire.PREAMBLE + struct.pack(">I", 16 * 1024) + b"\x94" * (16 * 1024 - 1))
            opened.append(conn)
        # A frame over the handshake's limit is refused at once.
        with RawConnection(bounded.port) as too_big:
            too_big.send(wire.PREAMBLE + struct.pack(">I", 16 * MiB) + b"\x94" * MiB)
            codes = [f[2] for f in too_big.read_to_eof(timeout=10) if f[0] == wire.ERROR]
            assert codes == ["frame_too_large"]
        started = time.monotonic()
        good.start()
        growth = peak_rss_growth_mib(bounded, base, 2.0)
        for conn in opened:
            frames = conn.read_to_eof(timeout=15)
            assert [f[2] for f in frames if f[0] == wire.ERROR] == ["protocol_error"], frames
        closed_after = time.monotonic() - started
        median = good.stop()
    assert growth < RSS_BOUND_SILENT_MIB, f"the server grew by {growth:.0f} MiB"
    assert median < SERVED_WITHIN, f"median request {median * 1000:.0f} ms during the abuse"
    # --handshake-timeout 3: every one is closed within a few seconds.
    assert closed_after < 3 + 5, f"closed after {closed_after:.1f}s"
    print(f"\nRSS +{growth:.1f} MiB, median {median * 1000:.1f} ms, closed in {closed_after:.1f}s")


# -- 3. more connections than the limit -------------------------------------------------

CAP = 64


@pytest.mark.slow
def test_a_connection_over_the_limit_gets_a_typed_error(
    start_server: StartServer, queue: str
) -> None:
    server = start_server(*LIMITS, "--max-connections", str(CAP))
    good = WellBehaved(server, queue)
    base = server.rss_kib()
    with sockets() as opened:
        good.start()
        refused: list[Any] = []
        while not refused:
            assert len(opened) <= CAP, "the limit was not enforced"
            conn = RawConnection(server.port)
            conn.send(wire.PREAMBLE + wire.request(1, "hello", HELLO))
            frame = conn.read_frame()
            assert frame is not None
            if frame[0] == wire.ERROR:
                refused.append(frame)
                assert conn.read_frame() is None  # and closed
                conn.close()
            else:
                opened.append(conn)
        assert refused[0][1:3] == [0, "too_many_connections"], refused
        assert "limit" in refused[0][3]
        growth = peak_rss_growth_mib(server, base, 1.0)
        median = good.stop()
    assert len(opened) < CAP  # the well-behaved client's own count too
    assert growth < 32, f"the server grew by {growth:.0f} MiB for {CAP} connections"
    assert median < SERVED_WITHIN, f"median request {median * 1000:.0f} ms"
    print(f"\n{len(opened)} connections, RSS +{growth:.1f} MiB, median {median * 1000:.1f} ms")
    # Their connections closed, new ones are accepted again.
    with conveyor.Client(server.url, timeout=20) as client:
        assert client.stats(queue).ready == 0
    # The client side maps the code to its class.
    assert error_for_code("too_many_connections", "x").__class__ is wire.TooManyConnections


# -- a frame over the limit after the handshake ----------------------------------------


def test_an_oversized_frame_is_refused_for_its_request_and_the_connection_kept(
    server: ServerProcess, queue: str
) -> None:
    base = server.rss_kib()
    with RawConnection(server.port) as conn:
        conn.hello()
        conn.call("create_queue", {"queue": queue, "settings": {}, "exist_ok": True})
        prefix = msgspec.msgpack.encode([0, 4242, "enqueue", {}])[:-1]
        length = 64 * MiB
        conn.send(struct.pack(">I", length) + prefix)
        chunk = b"\x00" * MiB
        for _ in range(length // MiB - 1):
            conn.send(chunk)
        conn.send(b"\x00" * (MiB - len(prefix)))
        error = conn.read_until(lambda f: f[0] == wire.ERROR)
        assert error[1:3] == [4242, "frame_too_large"], error
        # The connection goes on: the next request is answered.
        (sent,) = conn.call("enqueue", {"queue": queue, "messages": [{"body": b"after"}]})
        assert conn.call("stats", {"queue": queue})["ready"] == 1
        assert sent["id"]
    growth = (server.rss_kib() - base) / 1024
    assert growth < 32, f"a skipped 64 MiB frame grew the server by {growth:.0f} MiB"


def test_serve_refuses_limits_that_do_not_fit_together(tmp_path: Path) -> None:
    done = conveyor_cli(
        "serve", "--data", str(tmp_path), "--port", "0", "--http-port", "-1",
        "--max-connection-mib", "8", url=None,
    )  # fmt: skip
    assert done.returncode == 2
    assert "must hold a whole frame" in done.stderr + done.stdout
