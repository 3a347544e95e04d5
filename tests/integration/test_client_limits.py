"""Requests are checked against the limits the broker announced at the
handshake, before they are sent (client/limits.py; issue 13, part 2).

Against a real broker (max_body 1 MiB, max_batch 10000, max_frame 16 MiB +
64 KiB, its defaults): requests just under each limit pass; just over, they
raise BodyTooLarge or InvalidArgument naming the limit, the connection
carries on, and the broker never saw them. Against a recording stub that
announces small limits: not a byte of such a request is sent, and a frame
error from the broker (error frame with request id 0) fails the call with
that typed error, once, never sent again; any other error about the
connection leaves the call to be sent again.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from integration_support import ServerProcess

import conveyor
from conveyor.core import wire
from conveyor.core.types import NewMessage

MiB = 1 << 20
MAX_FRAME = 16 * MiB + 64 * 1024


def assert_untouched(server: ServerProcess) -> None:
    """The broker read no oversized frame (it logs each one it refuses)."""
    assert "exceeds the limit" not in server.log_text(), server.log_text()


def test_sync_requests_at_and_over_each_limit(server: ServerProcess, queue: str) -> None:
    with conveyor.Client(server.url) as client:
        client.create_queue(queue)
        with pytest.raises(conveyor.InvalidArgument) as caught:
            client.enqueue_many(queue, [b"x" * MiB] * 40)
        message = caught.value.message
        assert type(caught.value) is conveyor.InvalidArgument
        assert f"exceeds the broker's frame limit of {MAX_FRAME} bytes" in message
        assert "request of 4194" in message and "send smaller batches" in message
        with pytest.raises(conveyor.BodyTooLarge) as too_large:
            client.enqueue(queue, b"x" * (MiB + 1))
        assert too_large.value.message.startswith(
            f"body of {MiB + 1} bytes exceeds the broker's limit of {MiB} bytes"
        )
        with pytest.raises(conveyor.BodyTooLarge):
            client.publish("any.topic", b"x" * (MiB + 1))
        with pytest.raises(conveyor.InvalidArgument, match=r"limit of 10000 \(max_batch\)"):
            client.enqueue_many(queue, [b""] * 10_001)

        assert client.enqueue(queue, b"x" * MiB).id
        assert len(client.enqueue_many(queue, [b"x" * MiB] * 15)) == 15
        assert len(client.enqueue_many(queue, [NewMessage(body=b"")] * 10_000)) == 10_000
        assert client.stats(queue).ready == 10_016
    assert_untouched(server)


def test_async_requests_at_and_over_each_limit(server: ServerProcess, queue: str) -> None:
    async def scenario() -> None:
        async with conveyor.AsyncClient(server.url) as client:
            await client.create_queue(queue)
            with pytest.raises(conveyor.InvalidArgument, match="frame limit"):
                await client.enqueue_many(queue, [b"x" * MiB] * 40)
            with pytest.raises(conveyor.BodyTooLarge):
                await client.enqueue(queue, b"x" * (MiB + 1))
            await client.enqueue(queue, b"x" * MiB)
            (got,) = await client.receive(queue, wait=5)
            with pytest.raises(conveyor.BodyTooLarge, match="result of"):
                await got.ack(b"r" * (MiB + 1))
            await got.ack(b"r" * MiB)
            assert (await client.result(got.id, timeout=5)).body == b"r" * MiB
            assert (await client.stats(queue)).ready == 0

    asyncio.run(scenario())
    assert_untouched(server)


# -- a stub broker that records what reaches it ------------------------------------------

LIMITS = {"max_body": 100, "max_batch": 3, "max_frame": 300}


class StubBroker:
    """Answers hello with LIMITS, then records every request; ``answer``
    says how to reply to one: a reply, an error frame with request id 0, or
    a frame longer than the announced max_frame."""

    def __init__(self, answer: str = "reply") -> None:
        self.answer = answer
        self.requests: list[list[Any]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"conveyor://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self.listener.close()
        self.thread.join(10)
        assert not self.thread.is_alive()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            reader = wire.FrameReader(1 << 30)
            buffered = b""
            while len(buffered) < len(wire.PREAMBLE):
                chunk = conn.recv(1 << 16)
                if not chunk:
                    return
                buffered += chunk
            pending = reader.feed(buffered[len(wire.PREAMBLE) :])
            while True:
                for frame in pending:
                    if not self._frame(conn, frame):
                        return
                chunk = conn.recv(1 << 16)
                if not chunk:
                    return
                pending = reader.feed(chunk)

    def _frame(self, conn: socket.socket, frame: list[Any]) -> bool:
        if frame[0] == wire.HEARTBEAT:
            return True
        _, rid, op, _ = frame
        if op == "hello":
            conn.sendall(wire.reply(rid, {"server": "stub", "heartbeat": 30.0, **LIMITS}))
            return True
        self.requests.append(frame)
        if self.answer == "connection-error":
            conn.sendall(wire.encode((wire.ERROR, 0, "frame_too_large", "frame of 9 bytes")))
            return False
        if self.answer == "oversized-reply":
            conn.sendall(wire.reply(rid, "x" * 2 * LIMITS["max_frame"]))
            return False
        if self.answer == "closing-once" and len(self.requests) % 2 == 1:
            conn.sendall(wire.encode((wire.ERROR, 0, "broker_closed", "shutting down")))
            return False
        conn.sendall(wire.reply(rid, [{"id": "1", "duplicate": False}]))
        return True


@pytest.fixture
def stub() -> Iterator[StubBroker]:
    broker = StubBroker()
    yield broker
    broker.close()


def over_the_limits(client: conveyor.Client) -> None:
    with pytest.raises(conveyor.BodyTooLarge, match="limit of 100 bytes"):
        client.enqueue("q", b"x" * 101)
    with pytest.raises(conveyor.InvalidArgument, match=r"limit of 3 \(max_batch\)"):
        client.enqueue_many("q", [b""] * 4)
    with pytest.raises(conveyor.InvalidArgument, match="frame limit of 300 bytes"):
        client.enqueue_many(
            "q",
            [b"x" * 100] * 3,
        )
    with pytest.raises(conveyor.InvalidArgument, match="frame limit of 300 bytes"):
        client.create_queue("q", dedup_window=1.0, **{"x" * 2000: 1})


def test_nothing_over_the_announced_limits_is_sent(stub: StubBroker) -> None:
    with conveyor.Client(stub.url) as client:
        over_the_limits(client)
        assert stub.requests == []
        client.enqueue("q", b"x" * 100)  # at the limit: sent
        assert [frame[2] for frame in stub.requests] == ["enqueue"]


def test_async_nothing_over_the_announced_limits_is_sent(stub: StubBroker) -> None:
    async def scenario() -> None:
        async with conveyor.AsyncClient(stub.url) as client:
            with pytest.raises(conveyor.BodyTooLarge):
                await client.enqueue("q", b"x" * 101)
            with pytest.raises(conveyor.InvalidArgument, match="max_batch"):
                await client.enqueue_many("q", [b""] * 4)
            with pytest.raises(conveyor.InvalidArgument, match="frame limit of 300 bytes"):
                await client.enqueue_many("q", [b"x" * 100] * 3)
            assert stub.requests == []
            await client.enqueue("q", b"x" * 100)

    asyncio.run(scenario())
    assert [frame[2] for frame in stub.requests] == ["enqueue"]


@pytest.mark.parametrize("answer", ["connection-error", "oversized-reply"])
def test_a_frame_error_is_never_a_reason_to_send_again(answer: str) -> None:
    broker = StubBroker(answer)
    try:
        expected = "frame_too_large"
        with conveyor.Client(broker.url, timeout=5) as client:
            with pytest.raises(conveyor.ConveyorError) as caught:
                client.enqueue("q", b"once")
            assert caught.value.code == expected
        assert len(broker.requests) == 1

        async def scenario() -> None:
            async with conveyor.AsyncClient(broker.url, timeout=5) as client:
                with pytest.raises(conveyor.ConveyorError) as caught:
                    await client.enqueue("q", b"once")
                assert caught.value.code == expected

        asyncio.run(scenario())
        assert len(broker.requests) == 2
    finally:
        broker.close()


def test_another_connection_error_sends_the_call_again() -> None:
    """An error with request id 0 that is not a frame error (the broker
    closing, say) is only logged: the call is sent again on a new connection."""
    broker = StubBroker("closing-once")
    try:
        with conveyor.Client(broker.url, timeout=5) as client:
            assert client.enqueue("q", b"twice").id == "1"
        assert len(broker.requests) == 2

        async def scenario() -> None:
            async with conveyor.AsyncClient(broker.url, timeout=5) as client:
                assert (await client.enqueue("q", b"twice")).id == "1"

        asyncio.run(scenario())
        assert len(broker.requests) == 4
    finally:
        broker.close()
