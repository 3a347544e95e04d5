"""The client side of one native-protocol connection, without I/O: the one
implementation of the protocol's client logic (docs/protocol.md). The
asyncio transport (native.py) and the blocking one (blocking.py) drive it;
they only move bytes and read the clock.

Bytes in, bytes out. ``hello()`` is what opens a connection. ``feed`` takes
whatever the socket gave, cut anywhere: first the hello reply (whose checks
tell a Conveyor broker from another peer, and what it announced: its limits,
its heartbeat), then frames. A reply or an error completes the call of its
request id, in whatever order they come; pushed deliveries and ended
subscriptions go to ``on_push`` and ``on_end``; an error about the
connection itself (request id 0) is raised if it is a frame error (the
stream cannot be trusted: the calls in flight must not be sent again), else
logged. ``request`` checks a call against the announced limits (limits.py)
and gives the bytes to send, or raises with nothing sent. ``beat`` gives a
heartbeat to send every ``beat_every`` seconds, or raises Lost once the
broker was silent three intervals. ``fail`` ends every call in flight when
the connection is gone. ``Resend`` decides whether and when a call whose
connection was lost is sent again.

A call in flight is a ``Waiter``: an asyncio Future on the event loop, an
``Answer`` on a blocking socket. Not thread-safe: one connection is driven
by one thread (the event loop's, or the blocking call's) at a time.

Cost on the hot path: a request is checked, encoded and registered as the
asyncio transport did it inline; a frame in is a dict pop and a
``set_result`` (a push: a method call), with no event object in between.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from conveyor.client.connecting import (
    RECONNECT,
    ConnectionLost,
    connection_error,
    hello,
    hello_reply_length,
    welcome,
)
from conveyor.client.limits import check_frame, check_request
from conveyor.core import wire
from conveyor.core.errors import ConveyorError, error_for_code

PushSink = Callable[[int, list[Any]], None]
EndSink = Callable[[int, ConveyorError], None]


class Lost(Exception):
    """Internal: the connection died under a call, which may be sent again."""


class Waiter(Protocol):
    """A call in flight: what its reply completes."""

    def done(self) -> bool: ...
    def set_result(self, result: object, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


class Answer:
    """A ``Waiter`` for the one call a blocking connection carries."""

    __slots__ = ("_done", "error", "result")

    def __init__(self) -> None:
        self._done = False
        self.result: object = None
        self.error: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, result: object, /) -> None:
        self.result, self._done = result, True

    def set_exception(self, exception: BaseException, /) -> None:
        self.error, self._done = exception, True

    def value(self) -> object:
        """The reply, or the error the broker answered with, raised."""
        if self.error is not None:
            raise self.error
        return self.result


def _ignore(sub: int, what: object) -> None:
    """Pushes where no subscription is made (a blocking connection)."""


class Connection:
    """One connection's protocol state: the handshake, the frames, the
    calls in flight, the heartbeats' bookkeeping."""

    def __init__(
        self,
        where: str,
        *,
        token: str | None = None,
        name: str = "",
        heartbeat: float = 2.0,
        on_push: PushSink = _ignore,
        on_end: EndSink = _ignore,
    ) -> None:
        self.where = where  # host:port, for the handshake's errors
        self.token = token
        self.name = name
        self.info: dict[str, Any] = {}  # what the broker announced (limits among it)
        self.heartbeat = heartbeat  # seconds; the broker's own once it said hello
        self.last_in = 0.0  # when the broker last sent anything
        self._on_push = on_push
        self._on_end = on_end
        self._hello_reply = bytearray()
        self._frames: wire.FrameReader | None = None  # once the handshake is done
        self._pending: dict[int, Waiter] = {}
        self._next_rid = 1

    # -- the handshake ----------------------------------------------------------------

    def hello(self) -> bytes:
        """The bytes that open the connection: the preamble and the hello."""
        return hello(self.token, self.name)

    @property
    def ready(self) -> bool:
        """Whether the broker's hello reply came (and was a welcome)."""
        return self._frames is not None

    def _handshake(self, data: bytes) -> bytes | None:
        """Take bytes of the hello reply; once it is whole, the bytes that
        came after it (None until then). ProtocolError for a peer that is no
        Conveyor broker; the broker's error (Unauthorized...) if it refused."""
        self._hello_reply += data
        if len(self._hello_reply) < 5:
            return None
        length = hello_reply_length(bytes(self._hello_reply[:5]), self.where)
        if len(self._hello_reply) < 4 + length:
            return None
        reply, rest = self._hello_reply[4 : 4 + length], self._hello_reply[4 + length :]
        self._hello_reply = bytearray()
        self.info = welcome(wire.decode(bytes(reply)))
        self.heartbeat = float(self.info.get("heartbeat", self.heartbeat))
        self._frames = wire.FrameReader(int(self.info.get("max_frame", wire.DEFAULT_MAX_FRAME)))
        return bytes(rest)

    # -- bytes in ------------------------------------------------------------------

    def feed(self, data: bytes, now: float) -> None:
        """Take bytes from the broker (``now``: the monotonic clock): complete
        the calls whose replies came, hand on pushes and ended subscriptions.
        Raises a frame error (a frame this side cannot read, or the broker
        saying it could not read ours): the connection must be dropped."""
        self.last_in = now
        if self._frames is None:
            rest = self._handshake(data)
            if rest is None or self._frames is None:
                return
            data = rest
        pending = self._pending
        for frame in self._frames.feed(data):
            kind = frame[0]
            if kind == wire.REPLY:
                waiter = pending.pop(frame[1], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(frame[2])
            elif kind == wire.PUSH:
                self._on_push(frame[1], frame[2])
            elif kind == wire.ERROR:
                if frame[1] == 0:  # about the connection
                    connection_error(frame)
                    continue
                waiter = pending.pop(frame[1], None)
                if waiter is not None and not waiter.done():
                    waiter.set_exception(error_for_code(frame[2], frame[3]))
            elif kind == wire.SUB_END:
                self._on_end(frame[1], error_for_code(frame[2], frame[3]))

    # -- bytes out -----------------------------------------------------------------

    def request(self, op: str, args: dict[str, Any], waiter: Waiter) -> tuple[int, bytes]:
        """The request id and bytes of a call, whose reply completes
        ``waiter``. A request over the broker's limits raises here, and
        nothing is registered or to be sent."""
        check_request(op, args, self.info)
        rid = self._next_rid
        data = wire.request(rid, op, args)
        check_frame(op, len(data) - 4, self.info)
        self._next_rid = rid + 1
        self._pending[rid] = waiter
        return rid, data

    def forget(self, rid: int) -> None:
        """The caller no longer waits for this call (cancelled, or done)."""
        self._pending.pop(rid, None)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def beat_every(self) -> float:
        """How often to call ``beat``: every half heartbeat interval."""
        return self.heartbeat / 2

    def beat(self, now: float) -> bytes:
        """A heartbeat to send; Lost if the broker was silent for three
        heartbeat intervals (it sends one every interval it has nothing else
        to send): its connection is to be dropped."""
        silent = now - self.last_in
        if silent > 3 * self.heartbeat:
            raise Lost(f"the broker was silent for {silent:.1f}s")
        return wire.HEARTBEAT_FRAME

    def fail(self, why: str, error: ConveyorError | None = None) -> None:
        """The connection is gone: every call in flight fails with ``error``
        (a frame error: never sent again) or with Lost (sent again)."""
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            if not waiter.done():
                waiter.set_exception(error if error is not None else Lost(why))


class Resend:
    """Whether and when a call whose connection was lost is sent again: on a
    new connection, after ``RECONNECT``'s backoff, until its deadline.
    Enqueues carry an idempotency key, so a retried enqueue is not stored
    twice; a retried ack whose lease was released meanwhile answers
    LeaseLost, like any late ack. A frame error never comes here: it fails
    the call at once."""

    __slots__ = ("deadline", "lost", "op")

    def __init__(self, op: str, deadline: float) -> None:
        self.op = op
        self.deadline = deadline  # the call's monotonic deadline (now + its timeout)
        self.lost = 0

    def after(self, exc: Lost, now: float) -> float:
        """Seconds to pause before sending the call again; ConnectionLost if
        its timeout would run out first."""
        self.lost += 1
        wait = RECONNECT.backoff(self.lost)
        if now + wait > self.deadline:
            raise ConnectionLost(f"{self.op}: connection lost ({exc}) and not regained")
        return wait


