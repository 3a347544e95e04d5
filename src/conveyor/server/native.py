"""The native protocol server: TCP, length-prefixed MessagePack frames.

The listener and its connections. Bounds, so that no client can make the
server hold without limit (docs/operations.md, "Limits"):
  - at most ``max_connections`` connections: one more is sent the error
    ``too_many_connections`` and closed;
  - before its handshake a connection may send frames of at most
    ``MAX_HELLO_FRAME`` bytes (connection.py), and it is closed if it has
    not completed the handshake within ``handshake_timeout`` seconds;
  - after it, a frame longer than ``max_frame`` is refused before its body is
    read: its request gets ``frame_too_large``, and the rest of the frame is
    dropped as it arrives, never buffered; the connection stays;
  - the bytes of requests in flight and of replies not yet sent are counted
    per connection and in total (server/budget.py); a connection without
    room is not read, and waits to build a reply, until some is freed; a
    reply never passes the frame limit (lists of messages are cut to fit,
    anything else over it gets ``reply_too_large``);
  - at most ``max_inflight`` requests run per connection, and at most
    ``MAX_RECEIVES`` of them are receives; the requests past that wait,
    parsed, and the server stops reading from the socket until they can start;
  - when the socket's send buffer passes its high-water mark (a client that
    does not read), the server starts no request, stops reading and stops
    pushing deliveries until it drains; a client that takes none of it for
    three heartbeat intervals is disconnected;
  - pushed deliveries are bounded by the subscription's credit (prefetch):
    a delivery's credit comes back when the client settles it.

One ``Connection`` per client socket is in connection.py: its requests, its
consumer session and subscriptions, its flow control and heartbeats. When a
connection is lost, its ending (its tasks ended, then its session closed) is
a task of the server's ``endings``, which ``stop`` waits for.
"""

from __future__ import annotations

import asyncio
import ssl

from conveyor.broker.broker import Broker
from conveyor.core import wire
from conveyor.core.tasks import TaskSet
from conveyor.server.budget import Pool, check_limits
from conveyor.server.connection import Connection

# A frame's bytes besides the messages its reply budget counts.
FRAME_MARGIN = 64 * 1024

DEFAULT_MAX_CONNECTIONS = 4096
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_CONNECTION_BYTES = 32 * 1024 * 1024
DEFAULT_TOTAL_BYTES = 256 * 1024 * 1024


class NativeServer:
    def __init__(
        self,
        broker: Broker,
        *,
        host: str = "127.0.0.1",
        port: int = 7710,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        heartbeat: float = 2.0,
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        max_inflight: int = 512,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_connection_bytes: int = DEFAULT_CONNECTION_BYTES,
        max_total_bytes: int = DEFAULT_TOTAL_BYTES,
    ) -> None:
        check_limits(
            broker.config.max_reply_bytes + FRAME_MARGIN,
            max_frame,
            max_connections,
            handshake_timeout,
            max_connection_bytes,
            max_total_bytes,
        )
        self.broker = broker
        self.host = host
        self.port = port
        self.token = token
        self.ssl_context = ssl_context
        self.heartbeat = heartbeat
        self.max_frame = max_frame
        self.max_inflight = max_inflight
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.requests = Pool(max_total_bytes, max_connection_bytes)
        self.replies = Pool(max_total_bytes, max_connection_bytes)
        self.replies.refresh = self._count_drained
        self.connections: set[Connection] = set()
        self.refused: set[Connection] = set()
        self.draining: set[Connection] = set()  # replies counted until their socket drains
        self.endings = TaskSet("native connection endings")  # sessions closing
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self),
            self.host,
            self.port,
            ssl=self.ssl_context,
            backlog=1024,
            ssl_handshake_timeout=self.handshake_timeout if self.ssl_context else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def _count_drained(self) -> None:
        for conn in list(self.draining):
            conn.check_drained()

    async def stop(self) -> None:
        """Stop accepting, then end every connection (their sessions close)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections) + list(self.refused):
            conn.abort()
        for conn in list(self.connections) + list(self.refused):
            await conn.closed
        await self.endings.wait()  # those of connections lost before, too
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
