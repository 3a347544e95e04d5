"""The native protocol server: TCP, length-prefixed MessagePack frames.

One ``Connection`` per client socket (an asyncio Protocol, no streams: the
hot path is a callback). Requests are pipelined: each runs as its own task,
so a long-polling receive does not hold up the enqueues behind it, and every
enqueue of every connection meets the others in the store's group commit.

Bounds, so that no client can make the server buffer without limit:
  - a frame longer than ``max_frame`` is refused before its body is read;
  - at most ``max_inflight`` requests run per connection, and at most
    ``MAX_RECEIVES`` of them are receives (whose replies carry bodies); the
    requests past that wait, parsed, and the server stops reading from the
    socket until they can start;
  - when the socket's send buffer passes its high-water mark (a client that
    does not read), the server starts no request, stops reading and stops
    pushing deliveries until it drains; so what it buffers for a client is
    bounded by the replies of the requests already running;
  - pushed deliveries are bounded by the subscription's credit (prefetch):
    a delivery's credit comes back when the client settles it.

A connection owns at most one consumer session, opened by its first receive
or consume; when the connection ends, for whatever reason, the session is
closed and its leases are released at once. A client silent for three
heartbeat intervals is considered gone.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
import time
from collections import deque
from typing import Any, cast

from conveyor.broker import operations
from conveyor.broker.broker import Broker
from conveyor.broker.flow import CreditedConsumer, return_credit
from conveyor.core import wire
from conveyor.core.errors import BrokerClosed, ConveyorError, InvalidArgument, SessionNotFound

log = logging.getLogger("conveyor.server")

# Receives of one connection running at once: each may hold up to
# max_receive bodies between the store and the socket.
MAX_RECEIVES = 4

SERVER_NAME = "conveyor"


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
    ) -> None:
        self.broker = broker
        self.host = host
        self.port = port
        self.token = token
        self.ssl_context = ssl_context
        self.heartbeat = heartbeat
        self.max_frame = max_frame
        self.max_inflight = max_inflight
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self), self.host, self.port, ssl=self.ssl_context, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting, then end every connection (their sessions close)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        for conn in list(self.connections):
            await conn.closed
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


class Connection(asyncio.Protocol):
    def __init__(self, server: NativeServer) -> None:
        self.server = server
        self.broker = server.broker
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.reader = wire.FrameReader(server.max_frame)
        self.preamble = b""
        self.authenticated = False
        self.name = ""
        self.peer = "?"
        self.tasks: set[asyncio.Task[None]] = set()
        # Requests read but not started yet (see the bounds above).
        self.waiting: deque[tuple[int, Any, Any]] = deque()
        self.waiting_receives: deque[tuple[int, Any, Any]] = deque()
        self.receives = 0
        self.subs: dict[int, CreditedConsumer] = {}
        self.next_sub = 1
        self.session_id: str | None = None
        self._session_lock = asyncio.Lock()
        self.writable = asyncio.Event()
        self.writable.set()
        self.reading_paused = False
        self.last_in = self.last_out = time.monotonic()
        self.last_broker_beat = 0.0
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._ticker: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave so.
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.transport.set_write_buffer_limits(high=1 << 20, low=256 << 10)
        self.server.connections.add(self)
        self._ticker = self.loop.call_later(self.server.heartbeat, self._tick)

    def data_received(self, data: bytes) -> None:
        self.last_in = time.monotonic()
        if len(self.preamble) < len(wire.PREAMBLE):
            need = len(wire.PREAMBLE) - len(self.preamble)
            self.preamble += data[:need]
            data = data[need:]
            if not wire.PREAMBLE.startswith(self.preamble):
                self._fatal(wire.ProtocolError("not a Conveyor client: bad preamble or version"))
                return
            if not data:
                return
        try:
            frames = self.reader.feed(data)
        except ConveyorError as exc:
            self._fatal(exc)
            return
        for frame in frames:
            self._frame(frame)
        self._beat_session()

    def pause_writing(self) -> None:
        self.writable.clear()
        self._pause_reading()

    def resume_writing(self) -> None:
        self.writable.set()
        self._start_waiting()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self._ticker is not None:
            self._ticker.cancel()
        self.writable.set()
        self.waiting.clear()
        self.waiting_receives.clear()
        for task in list(self.tasks):
            task.cancel()
        for sub in self.subs.values():
            sub.stop()
        self.loop.create_task(self._end_session())

    async def _end_session(self) -> None:
        try:
            if self.session_id is not None:
                await self.broker.close_session(self.session_id)
        except ConveyorError as exc:
            log.debug("closing session of %s: %s", self.peer, exc)
        finally:
            if not self.closed.done():
                self.closed.set_result(None)

    # -- frames -------------------------------------------------------------

    def _frame(self, frame: list[Any]) -> None:
        kind = frame[0]
        if kind == wire.HEARTBEAT:
            return
        if kind != wire.REQUEST or len(frame) != 4 or not isinstance(frame[1], int):
            self.send(wire.error(0, wire.ProtocolError(f"unexpected frame kind {kind!r}")))
            return
        _, rid, op, args = frame
        if not self.authenticated:
            if op != "hello":
                self._fatal(wire.ProtocolError("the first request must be hello"))
                return
            self._hello(rid, args)
            return
        (self.waiting_receives if op == "receive" else self.waiting).append((rid, op, args))
        self._start_waiting()

    def _hello(self, rid: int, args: Any) -> None:
        if not isinstance(args, dict):
            self._fatal(wire.ProtocolError("hello needs a map of arguments"), rid)
            return
        version = args.get("version")
        if version != wire.VERSION:
            self._fatal(wire.ProtocolError(f"unsupported protocol version {version!r}"), rid)
            return
        expected = self.server.token
        given = args.get("token")
        if expected is not None and not (
            isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())
        ):
            self._fatal(wire.Unauthorized("missing or wrong auth token"), rid)
            return
        name = args.get("name")
        self.name = name[:200] if isinstance(name, str) else ""
        self.authenticated = True
        config = self.broker.config
        self.send(
            wire.reply(
                rid,
                {
                    "server": SERVER_NAME,
                    "version": wire.VERSION,
                    "heartbeat": self.server.heartbeat,
                    "max_frame": self.server.max_frame,
                    "max_body": config.max_body,
                    "max_batch": config.max_batch,
                },
            )
        )

    async def _request(self, rid: int, op: Any, args: Any) -> None:
        try:
            if op == "consume":
                result: Any = await self._consume(args)
            elif op == "cancel":
                result = self._cancel(args)
            else:
                if op in ("ack", "nack", "dead") and self.subs:
                    # The consumer has room again as soon as it settles: its
                    # next claim can share the settle's group commit.
                    self._return_credit(args)
                result = await operations.call(self.broker, op, args, self)
        except ConveyorError as exc:
            self.send(wire.error(rid, exc))
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("request %s from %s failed", op, self.peer)
            self.send(wire.error(rid, ConveyorError(f"internal error: {exc.__class__.__name__}")))
            return
        self.send(wire.reply(rid, result))

    # -- consumer session and subscriptions ---------------------------------

    async def session(self, capacity: int = 1) -> str:
        async with self._session_lock:
            if self.session_id is None:
                self.session_id = await self.broker.open_session(
                    self.name or self.peer, capacity=max(1, capacity)
                )
            return self.session_id

    async def _consume(self, args: Any) -> dict[str, int]:
        if not isinstance(args, dict):
            raise InvalidArgument("consume needs {queue, prefetch}")
        queue, prefetch = args.get("queue"), args.get("prefetch", 1)
        if not isinstance(queue, str):
            raise InvalidArgument("consume needs a queue name")
        if (
            isinstance(prefetch, bool)
            or not isinstance(prefetch, int)
            or not 1 <= prefetch <= 10_000
        ):
            raise InvalidArgument("prefetch is an integer from 1 to 10000")
        sub_id = args.get("sub")
        if sub_id is None:  # the server chooses
            sub_id = self.next_sub
            while sub_id in self.subs:
                sub_id += 1
            self.next_sub = sub_id + 1
        elif isinstance(sub_id, bool) or not isinstance(sub_id, int) or sub_id < 1:
            raise InvalidArgument("sub is a positive integer chosen by the client")
        elif sub_id in self.subs:
            raise InvalidArgument(f"subscription {sub_id} is already open on this connection")
        await self.broker.get_queue(queue)
        session = await self.session(prefetch)
        if sub_id in self.subs:  # opened meanwhile by a pipelined twin
            raise InvalidArgument(f"subscription {sub_id} is already open on this connection")
        sub = CreditedConsumer(
            self.broker,
            session,
            queue,
            prefetch,
            lambda got: self.send(wire.encode((wire.PUSH, sub_id, got))),
            lambda exc: self._end_subscription(sub_id, exc),
            self.writable,
        )
        self.subs[sub_id] = sub
        sub.start()
        return {"sub": sub_id}

    def _end_subscription(self, sub_id: int, exc: ConveyorError) -> None:
        self.subs.pop(sub_id, None)
        if isinstance(exc, SessionNotFound | BrokerClosed):
            self.abort()  # the session is gone: the client must start afresh
        else:  # the queue was deleted, say
            self.send(wire.encode((wire.SUB_END, sub_id, exc.code, exc.message)))

    def _cancel(self, args: Any) -> bool:
        sub_id = args.get("sub") if isinstance(args, dict) else None
        sub = self.subs.pop(sub_id, None) if isinstance(sub_id, int) else None
        if sub is None:
            return False
        sub.stop()
        return True

    def _return_credit(self, args: Any) -> None:
        items = args.get("items") if isinstance(args, dict) else None
        if isinstance(items, list):
            ids = [i["id"] for i in items if isinstance(i, dict) and isinstance(i.get("id"), str)]
            return_credit(self.subs, ids)

    # -- writing, flow control and heartbeats -------------------------------

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.last_out = time.monotonic()

    def _start_waiting(self) -> None:
        """Start the requests read so far, as far as the bounds allow; stop
        reading while any has to wait, resume once none does."""
        while self._room() and (self.waiting or self.waiting_receives):
            if self.waiting:
                self._spawn(self._request(*self.waiting.popleft()))
            elif self.receives < MAX_RECEIVES:
                self.receives += 1
                task = self._spawn(self._request(*self.waiting_receives.popleft()))
                task.add_done_callback(self._receive_done)
            else:
                break
        if self.waiting or self.waiting_receives or not self._room():
            self._pause_reading()
        else:
            self._resume_reading()

    def _room(self) -> bool:
        return self.writable.is_set() and len(self.tasks) < self.server.max_inflight

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._start_waiting()

    def _receive_done(self, task: asyncio.Task[None]) -> None:
        self.receives -= 1
        self._start_waiting()

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.transport.is_closing():
            self.reading_paused = False
            self.transport.resume_reading()

    def _tick(self) -> None:
        now = time.monotonic()
        hb = self.server.heartbeat
        # A paused reader hears nothing by design: only silence while we
        # listen counts against the client.
        if not self.reading_paused and now - self.last_in > 3 * hb:
            # An idle producer's connection (no session) is closed as a
            # matter of course; a consumer's silence is news.
            level = logging.INFO if self.session_id is not None else logging.DEBUG
            log.log(level, "%s silent for %.1fs: closing", self.peer, now - self.last_in)
            self.abort()
            return
        if now - self.last_out >= hb * 0.9:
            self.send(wire.HEARTBEAT_FRAME)
        self._beat_session()
        self._ticker = self.loop.call_later(hb, self._tick)

    def _beat_session(self) -> None:
        """The client is alive while it talks: keep its session alive too."""
        now = time.monotonic()
        if self.session_id is None or now - self.last_broker_beat < self.server.heartbeat:
            return
        if now - self.last_in > 3 * self.server.heartbeat:
            return
        self.last_broker_beat = now
        self._spawn(self._beat(self.session_id))

    async def _beat(self, session: str) -> None:
        try:
            await self.broker.heartbeat(session)
        except ConveyorError as exc:
            log.warning("session of %s is gone (%s): closing the connection", self.peer, exc)
            self.abort()

    def _fatal(self, exc: ConveyorError, rid: int = 0) -> None:
        """Tell the client why, then hang up: the stream cannot be trusted."""
        log.info("%s: %s", self.peer, exc.message)
        self.send(wire.error(rid, exc))
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
