"""The sync Client's calls that hold no lease, over blocking sockets in the
calling thread (conveyor.client.blocking): against a real ``conveyor serve``
that is killed and restarted, from many threads and a forked child, and
against a bare socket playing a slow broker, to see the heartbeats sent
while a reply is awaited."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
from integration_support import RawConnection, ServerProcess, StartServer, wait_until

import conveyor
from conveyor.client import blocking
from conveyor.client.blocking import BlockingCalls
from conveyor.client.native import ConnectionLost, NativeTransport
from conveyor.core import wire
from conveyor.core.errors import QueueNotFound
from requires import unavailable

GIVE_UP_WITHIN = 30.0  # far above the clients' 1.5 s timeouts: only a hang reaches it
T = TypeVar("T")


def within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``'s outcome, run in a thread; fails the test if it has none
    after ``seconds`` (a wait that only a call that hangs reaches)."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(call).result(timeout=seconds)
    finally:
        pool.shutdown(wait=False)


def test_threads_share_one_client_and_nothing_is_stored_twice(
    server: ServerProcess, queue: str
) -> None:
    with conveyor.Client(server.url, timeout=10) as client:
        client.create_queue(queue)

        def produce(thread: int) -> list[str]:
            return [client.enqueue(queue, {"t": thread, "i": i}).id for i in range(100)]

        with ThreadPoolExecutor(8) as pool:
            ids = [i for batch in pool.map(produce, range(8)) for i in batch]
        assert len(set(ids)) == 800
        assert client.stats(queue).ready == 800


def test_errors_keep_their_type_and_the_connection_stays_usable(
    server: ServerProcess, queue: str
) -> None:
    with conveyor.Client(server.url, timeout=10) as client:
        for _ in range(3):
            with pytest.raises(QueueNotFound):
                client.enqueue(queue, b"nowhere")
        client.create_queue(queue)
        assert client.enqueue(queue, b"here").duplicate is False


def test_a_batch_larger_than_the_socket_buffer_goes_in_one_call(
    server: ServerProcess, queue: str
) -> None:
    with conveyor.Client(server.url, timeout=10) as client:
        client.create_queue(queue)
        sent = client.enqueue_many(queue, [bytes([i % 256]) * 10_000 for i in range(800)])
        assert len({r.id for r in sent}) == 800
        assert client.stats(queue).ready == 800


def test_an_idle_client_keeps_its_connection(start_server: StartServer) -> None:
    server = start_server("--heartbeat", "0.2", "--session-timeout", "0.5")
    with conveyor.Client(server.url, timeout=10) as client:
        client.create_queue("idle")
        pool = client._calls
        (before,) = pool._idle
        # A connection that says hello and then nothing, idle since after
        # the pool's went idle: once the broker drops it for its silence,
        # the pool's connection was idle long enough to be dropped too.
        with RawConnection(server.port) as silent:
            silent.hello()
            silent.read_to_eof(timeout=30)
        client.enqueue("idle", b"after a pause")
        (after,) = pool._idle
        assert after is before  # kept alive by heartbeats, not made again
        assert client.stats("idle").ready == 1


def test_spare_connections_of_a_burst_are_closed_once_idle(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blocking, "SPARE_IDLE", 0.5)
    server = start_server("--heartbeat", "0.2", "--session-timeout", "0.5")
    with conveyor.Client(server.url, timeout=10) as client:
        client.create_queue("burst")
        pool = client._calls
        barrier = threading.Barrier(4)

        def produce() -> None:
            barrier.wait()
            for _ in range(50):
                client.enqueue("burst", b"x")

        with ThreadPoolExecutor(4) as threads:
            list(threads.map(lambda _: produce(), range(4)))
        assert len(pool._idle) > 1
        # The spares go once idle; the one kept alive for the next call stays.
        wait_until(lambda: len(pool._idle) == 1, 30, "the spare connections to be closed")
        client.enqueue("burst", b"y")
        assert client.stats("burst").ready == 201


def test_calls_survive_a_broker_killed_and_restarted(start_server: StartServer) -> None:
    server = start_server()
    with conveyor.Client(server.url, timeout=15) as client:
        client.create_queue("phoenix")
        client.enqueue("phoenix", b"before")
        server.kill()
        server.start()  # same port, same data
        client.enqueue("phoenix", b"after")

        server.kill()
        restarting = threading.Event()

        def restart_it() -> None:
            restarting.set()
            server.start()

        restart = threading.Timer(1.0, restart_it)
        restart.start()
        client.enqueue("phoenix", b"while it was down")  # waits for it to come back
        assert restarting.is_set(), "answered while the broker was down"
        restart.join()
        assert client.stats("phoenix").ready == 3


def test_a_broker_that_stays_away_is_connection_lost(start_server: StartServer) -> None:
    server = start_server()
    client = conveyor.Client(server.url, timeout=1.5).connect()
    server.kill()
    with pytest.raises(ConnectionLost):
        # It gives up (after its 1.5 s timeout) rather than waiting forever.
        within(GIVE_UP_WITHIN, lambda: client.enqueue("gone", b"x"))
    client.close()


def test_a_forked_child_makes_connections_of_its_own(server: ServerProcess, queue: str) -> None:
    if not hasattr(os, "fork"):
        unavailable("needs os.fork")
    with conveyor.Client(server.url, timeout=10) as client:
        client.create_queue(queue)
        client.enqueue(queue, b"parent, before")
        pid = os.fork()
        if pid == 0:  # the child: reusing the parent's socket would mix replies
            code = 1
            try:
                client.enqueue(queue, b"child")
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        client.enqueue(queue, b"parent, after")
        assert client.stats(queue).ready == 3


class SlowBroker:
    """A socket that speaks just enough of the protocol: it answers hello
    (heartbeat 0.2 s), then answers each request after ``delay`` seconds,
    counting the heartbeats it hears meanwhile and answering each (a real
    broker sends its own every interval), unless ``silent``."""

    def __init__(self, delay: float, *, silent: bool = False) -> None:
        self.delay = delay
        self.silent = silent
        self.heartbeats = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            frames = wire.FrameReader()
            conn.recv(len(wire.PREAMBLE))
            while chunk := conn.recv(1 << 16):
                for frame in frames.feed(chunk):
                    if frame[0] == wire.HEARTBEAT:
                        self.heartbeats += 1
                        if not self.silent:
                            conn.sendall(wire.HEARTBEAT_FRAME)
                    elif frame[2] == "hello":
                        conn.sendall(wire.reply(0, {"heartbeat": 0.2}))
                    else:
                        answer = wire.reply(frame[1], "late")
                        threading.Timer(self.delay, self._send, [conn, answer]).start()

    @staticmethod
    def _send(conn: socket.socket, data: bytes) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(data)

    def close(self) -> None:
        self.listener.close()


def test_a_long_wait_for_a_reply_keeps_sending_heartbeats() -> None:
    broker = SlowBroker(delay=1.0)
    calls = BlockingCalls(NativeTransport([("127.0.0.1", broker.port)], timeout=5))
    try:
        assert calls.call("result", {}) == "late"
        # Every half interval (0.1 s) of a 1 s wait, so that the broker does
        # not take the silence for a dead client.
        assert broker.heartbeats >= 5
    finally:
        calls.close()
        broker.close()


def test_a_silent_broker_is_given_up_on() -> None:
    broker = SlowBroker(delay=30.0, silent=True)
    calls = BlockingCalls(NativeTransport([("127.0.0.1", broker.port)], timeout=1.5))
    try:
        with pytest.raises(ConnectionLost):
            # Silent for three intervals (0.6 s), then no new connection
            # answers: given up on, not waited for (the broker's delay: 30 s).
            within(GIVE_UP_WITHIN, lambda: calls.call("result", {}))
    finally:
        calls.close()
        broker.close()


def test_calls_that_hold_no_lease_need_no_event_loop(server: ServerProcess, queue: str) -> None:
    """They are the AsyncClient's calls made synchronous (scripts/gen_sync.py
    refuses one that would need a loop): with the client's event loop thread
    stuck, they still run, in the calling thread."""
    with conveyor.Client(server.url, timeout=10) as client:
        stuck, release = threading.Event(), threading.Event()

        def block_the_loop() -> None:
            stuck.set()
            release.wait(GIVE_UP_WITHIN)

        client._portal._loop.call_soon_threadsafe(block_the_loop)
        try:
            assert stuck.wait(GIVE_UP_WITHIN)
            within(GIVE_UP_WITHIN, lambda: client.create_queue(queue))
            assert within(GIVE_UP_WITHIN, lambda: client.enqueue(queue, b"x")).duplicate is False
            assert within(GIVE_UP_WITHIN, lambda: client.stats(queue)).ready == 1
        finally:
            release.set()


def test_the_embedded_broker_keeps_the_event_loop_path(tmp_path: Path) -> None:
    with conveyor.Client(f"sqlite:///{tmp_path / 'q.db'}") as client:
        client.create_queue("local")
        client.enqueue("local", b"x")
        (got,) = client.receive("local")
        got.ack()
        assert client.stats("local").acked_total == 1
