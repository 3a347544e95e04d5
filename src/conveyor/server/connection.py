"""One native-protocol connection (server/native.py holds the listener and
the bounds it keeps).

A ``Connection`` is an asyncio Protocol, no streams: the hot path is a
callback. Requests are pipelined: each runs as its own task, so a
long-polling receive does not hold up the enqueues behind it, and every
enqueue of every connection meets the others in the store's group commit.

A connection owns at most one consumer session, opened by its first receive
or consume; when the connection ends, for whatever reason, the session is
closed and its leases are released at once. A client silent for three
heartbeat intervals is considered gone.

Tasks: a connection's requests and heartbeats belong to its TaskSet, its
subscriptions' consumers to theirs (core/tasks.py). When the connection is
lost both are cancelled, and its ending (wait for them, then close the
session) is a task of the server's ``endings``, which ``stop`` waits for.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from conveyor.broker import operations
from conveyor.core import wire
from conveyor.core.errors import (
    ConveyorError,
    FrameTooLarge,
    ProtocolError,
    ReplyTooLarge,
    TooManyConnections,
    Unauthorized,
)
from conveyor.core.tasks import TaskSet
from conveyor.server.budget import Replies
from conveyor.server.subscriptions import Subscriptions

if TYPE_CHECKING:
    from conveyor.server.native import NativeServer

log = logging.getLogger("conveyor.server")

# Receives of one connection running at once: each may hold up to
# max_receive bodies between the store and the socket.
MAX_RECEIVES = 4
# The largest frame before the handshake: a hello is a few hundred bytes.
MAX_HELLO_FRAME = 16 * 1024
# The socket's send buffer: above HIGH_WATER the client is not keeping up;
# reply bytes written while it is above LOW_WATER are counted until it drains.
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
# Seconds a connection over the limit is kept for its error to reach the client.
REFUSED_LINGER = 1.0

SERVER_NAME = "conveyor"


class Connection(asyncio.Protocol):
    def __init__(self, server: NativeServer) -> None:
        self.server = server
        self.broker = server.broker
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.reader = wire.FrameReader(MAX_HELLO_FRAME)
        self.preamble = b""
        self.authenticated = False
        self.refused = False
        # Bytes counted for this client (server/budget.py): requests read and
        # not finished, replies reserved or not yet sent.
        self.requests = server.requests.share(self._room_freed)
        self.replies = server.replies.share(self._room_freed)
        self.arriving = 0  # reserved for the frame whose first bytes are buffered
        self.unsent = 0  # reply bytes written while the send buffer was backed up
        self.starved = False  # reading stopped for want of room
        self.backlog_seen = 0
        self.stalled_since: float | None = None
        self.name = ""
        self.peer = "?"
        # Requests and heartbeats: each one ended makes room for the next.
        self.tasks = TaskSet("native connection", on_done=self._task_done)
        # Requests read but not started yet (see the bounds above): rid, op,
        # args and the bytes of the frame.
        self.waiting: deque[tuple[int, Any, Any, int]] = deque()
        self.waiting_receives: deque[tuple[int, Any, Any, int]] = deque()
        self.receives = 0
        self.subs = Subscriptions(self)
        self.session_id: str | None = None
        self._session_lock = asyncio.Lock()
        self.writable = asyncio.Event()
        self.writable.set()
        self.reading_paused = False
        self.last_in = self.last_out = time.monotonic()
        self.last_broker_beat = 0.0
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._ticker: asyncio.TimerHandle | None = None
        self._handshake_deadline: asyncio.TimerHandle | None = None
        self._room_handle: asyncio.Handle | None = None

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave so.
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.tasks.name = f"native connection {self.peer}"
        self.transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        if len(self.server.connections) >= self.server.max_connections:
            self._refuse()
            return
        self.server.connections.add(self)
        self._handshake_deadline = self.loop.call_later(
            self.server.handshake_timeout, self._handshake_late
        )
        self._ticker = self.loop.call_later(self.server.heartbeat, self._tick)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        self.last_in = time.monotonic()
        if len(self.preamble) < len(wire.PREAMBLE):
            need = len(wire.PREAMBLE) - len(self.preamble)
            self.preamble += data[:need]
            data = data[need:]
            if not wire.PREAMBLE.startswith(self.preamble):
                self._fatal(ProtocolError("not a Conveyor client: bad preamble or version"))
                return
            if not data:
                return
        if not self.authenticated:
            self._handshake(data)
            if not self.authenticated:
                return
            data = b""  # the rest is buffered in the reader
        try:
            frames = self.reader.feed_sized(data)
        except ConveyorError as exc:
            self._fatal(exc)
            return
        if self.reader.oversized:
            self._refuse_oversized()
        for frame, size in frames:
            if self.arriving:  # its bytes were reserved as its length came
                self.requests.release(self.arriving - size)
                self.arriving = 0
            else:
                self.requests.force(size)
            self._frame(frame, size)
        self._start_waiting()
        self._beat_session()

    def pause_writing(self) -> None:
        self.writable.clear()
        self._pause_reading()

    def resume_writing(self) -> None:
        self.writable.set()
        self.check_drained()
        self._start_waiting()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.server.refused.discard(self)
        self.server.draining.discard(self)
        for timer in (self._ticker, self._handshake_deadline, self._room_handle):
            if timer is not None:
                timer.cancel()
        self.requests.close()
        self.replies.close()
        self.writable.set()
        self.waiting.clear()
        self.waiting_receives.clear()
        self.tasks.cancel()
        self.subs.stop_all()
        self.server.endings.spawn(self._end())

    async def _end(self) -> None:
        """Once every task of the connection has ended, close its session."""
        try:
            await self.tasks.close()
            await self.subs.close()
            if self.session_id is not None:
                await self.broker.close_session(self.session_id)
        except ConveyorError as exc:
            log.debug("closing session of %s: %s", self.peer, exc)
        finally:
            if not self.closed.done():
                self.closed.set_result(None)

    # -- the handshake and the connection limit ------------------------------

    def _refuse(self) -> None:
        """Over the connection limit: say so, then close (once the client
        has read it, or after a moment)."""
        assert self.transport is not None
        self.refused = True
        self.server.refused.add(self)
        limit = self.server.max_connections
        log.info("%s refused: the server holds %d connections, its limit", self.peer, limit)
        exc = TooManyConnections(f"the server holds {limit} connections, its limit")
        self.transport.write(wire.error(0, exc))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._ticker = self.loop.call_later(REFUSED_LINGER, self.transport.close)

    def _handshake(self, data: bytes) -> None:
        """The frames before hello, one at a time: the first request must be
        hello, and no frame may pass MAX_HELLO_FRAME bytes."""
        while not self.authenticated:
            try:
                got = self.reader.feed_sized(data, limit=1)
            except ConveyorError as exc:
                self._fatal(exc)
                return
            data = b""
            if not got:
                return
            frame = got[0][0]
            if frame[0] == wire.HEARTBEAT:
                continue
            if (
                frame[0] != wire.REQUEST
                or len(frame) != 4
                or frame[2] != "hello"
                or not isinstance(frame[1], int)
            ):
                self._fatal(ProtocolError("the first request must be hello"))
                return
            self._hello(frame[1], frame[3])
            if self.transport is None or self.transport.is_closing():
                return

    def _handshake_late(self) -> None:
        timeout = self.server.handshake_timeout
        self._fatal(ProtocolError(f"no handshake within {timeout:g}s"))

    def _refuse_oversized(self) -> None:
        """Frames over the limit were dropped unread: their requests are refused."""
        for rid, length in self.reader.oversized:
            exc = FrameTooLarge(
                f"frame of {length} bytes exceeds the limit of {self.server.max_frame};"
                " the request was not run"
            )
            self.send(wire.error(rid or 0, exc))
        self.reader.oversized.clear()

    # -- frames -------------------------------------------------------------

    def _frame(self, frame: list[Any], size: int) -> None:
        kind = frame[0]
        if kind == wire.REQUEST and len(frame) == 4 and isinstance(frame[1], int):
            _, rid, op, args = frame
            (self.waiting_receives if op == "receive" else self.waiting).append(
                (rid, op, args, size)
            )
            return
        self.requests.release(size)
        if kind != wire.HEARTBEAT:
            self.send(wire.error(0, ProtocolError(f"unexpected frame kind {kind!r}")))

    def _hello(self, rid: int, args: Any) -> None:
        if not isinstance(args, dict):
            self._fatal(ProtocolError("hello needs a map of arguments"), rid)
            return
        version = args.get("version")
        if version != wire.VERSION:
            self._fatal(ProtocolError(f"unsupported protocol version {version!r}"), rid)
            return
        expected = self.server.token
        given = args.get("token")
        if expected is not None and not (
            isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())
        ):
            self._fatal(Unauthorized("missing or wrong auth token"), rid)
            return
        name = args.get("name")
        self.name = name[:200] if isinstance(name, str) else ""
        self.authenticated = True
        if self._handshake_deadline is not None:
            self._handshake_deadline.cancel()
        self.reader.max_frame = self.server.max_frame
        self.reader.skip_oversized = True
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
                    "max_reply": config.max_reply_bytes,
                },
            )
        )

    async def _request(self, rid: int, op: Any, args: Any, size: int) -> None:
        replies = Replies(self.replies)
        try:
            data = await self._answer(rid, op, args, replies)
        finally:
            self.requests.release(size)
        self.send(data, replies.hand_over())

    async def _answer(self, rid: int, op: Any, args: Any, replies: Replies) -> bytes:
        try:
            if op == "consume":
                result: Any = await self.subs.consume(args)
            elif op == "cancel":
                result = self.subs.cancel(args)
            else:
                if op in ("ack", "nack", "dead") and self.subs:
                    # The consumer has room again as soon as it settles: its
                    # next claim can share the settle's group commit.
                    self.subs.return_credit(args)
                result = await operations.call(self.broker, op, args, self, replies)
        except ConveyorError as exc:
            return wire.error(rid, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("request %s from %s failed", op, self.peer)
            return wire.error(rid, ConveyorError(f"internal error: {exc.__class__.__name__}"))
        data = wire.reply(rid, result)
        if len(data) - 4 > self.server.max_frame:
            log.warning("the reply to %s for %s takes %d bytes: refused", op, self.peer, len(data))
            return wire.error(
                rid,
                ReplyTooLarge(
                    f"the reply to {op} takes {len(data) - 4} bytes, more than the frame"
                    f" limit of {self.server.max_frame}"
                ),
            )
        return data

    # -- consumer session and subscriptions ---------------------------------

    async def session(self, capacity: int = 1) -> str:
        async with self._session_lock:
            if self.session_id is None:
                self.session_id = await self.broker.open_session(
                    self.name or self.peer, capacity=max(1, capacity)
                )
            return self.session_id

    # -- writing, flow control and heartbeats -------------------------------

    def send(self, data: bytes, reserved: int = 0) -> None:
        """Write a frame; ``reserved``: reply bytes counted for it, released
        once the socket has taken it (at once unless it is backed up)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            self.replies.release(reserved)
            return
        transport.write(data)
        self.last_out = time.monotonic()
        if transport.get_write_buffer_size() <= LOW_WATER:
            self.replies.release(reserved + self.unsent)
            if self.unsent:
                self.unsent = 0
                self.server.draining.discard(self)
            return
        # Backed up: the frame's bytes stay counted until the buffer drains.
        if len(data) > reserved:
            self.replies.force(len(data) - reserved)
        else:
            self.replies.release(reserved - len(data))
        self.unsent += len(data)
        self.server.draining.add(self)

    def check_drained(self) -> None:
        """Release the reply bytes counted while the send buffer was backed
        up, once it has drained."""
        if not self.unsent:
            return
        if self.transport is None or self.transport.get_write_buffer_size() <= LOW_WATER:
            unsent, self.unsent = self.unsent, 0
            self.server.draining.discard(self)
            self.replies.release(unsent)

    def _start_waiting(self) -> None:
        """Start the requests read so far, as far as the bounds allow; stop
        reading while any has to wait, or there is no room for what comes
        next; resume once neither holds."""
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
        elif not self._may_read():
            self.starved = True
            self._pause_reading()
        else:
            self.starved = False
            self._resume_reading()

    def _may_read(self) -> bool:
        """Whether what comes next has room: the frame now arriving gets its
        bytes reserved before its body is buffered (reading on then costs
        nothing new), or else there is room for requests and for replies."""
        pending = self.reader.pending
        if pending > self.arriving:
            taken = self.requests.try_take(pending - self.arriving, pending - self.arriving)
            if not taken:
                return False
            self.arriving += taken
        if self.arriving:
            return True
        return self.requests.has_room() and self.replies.has_room()

    def _room_freed(self) -> None:
        """Bytes were freed in a pool: a connection that stopped reading for
        want of room looks again (soon, not inside whoever freed them)."""
        if self.starved and self._room_handle is None and not self.refused:
            self._room_handle = self.loop.call_soon(self._look_again)

    def _look_again(self) -> None:
        self._room_handle = None
        if self.transport is not None and not self.transport.is_closing():
            self._start_waiting()

    def _room(self) -> bool:
        return self.writable.is_set() and len(self.tasks) < self.server.max_inflight

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        return self.tasks.spawn(coro)

    def _task_done(self, task: asyncio.Task[None]) -> None:
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
        self.check_drained()
        if self._stalled(now) > 3 * hb:
            log.info("%s has read nothing for %.1fs: closing", self.peer, self._stalled(now))
            self.abort()
            return
        if now - self.last_out >= hb * 0.9:
            self.send(wire.HEARTBEAT_FRAME)
        self._beat_session()
        self._ticker = self.loop.call_later(hb, self._tick)

    def _stalled(self, now: float) -> float:
        """For how long the send buffer has held bytes without shrinking: a
        client that reads takes some of it within a heartbeat or two."""
        backlog = self.transport.get_write_buffer_size() if self.transport is not None else 0
        if backlog == 0 or backlog < self.backlog_seen:
            self.stalled_since = None
        elif self.stalled_since is None:
            self.stalled_since = now
        self.backlog_seen = backlog
        return 0.0 if self.stalled_since is None else now - self.stalled_since

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
