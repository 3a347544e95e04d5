"""The native protocol over blocking sockets, for the sync Client's calls
that hold no lease (enqueue, publish, queue admin, stats, results...).

Through the event loop thread, each sync call cost two thread wake-ups (the
caller waking the loop, the loop waking the caller): more CPU and wall time
than the broker's own work for an enqueue at durability ``os``. Here the
calling thread writes its request and blocks in ``recv`` for the reply; the
kernel wakes it when the reply arrives.

``BlockingCalls`` keeps a pool of connections, one per thread calling at the
same moment (a connection carries one call at a time), made as they are
needed and reused. Like ``NativeTransport``, it tries every address with
backoff, for ``connect_timeout`` seconds until the client first connected
(then BrokerUnreachable), and checks requests against the broker's limits
before sending them; a call whose connection is lost is sent again on a new
one (for up to ``timeout`` seconds): enqueues carry an idempotency key, so a
retry is not stored twice, and an error about the connection itself (a frame
the broker could not read) is raised, never sent again. While it waits for a
reply, a connection sends a heartbeat every half interval (a ``result`` may
wait many seconds) and gives up on a broker silent for three. The broker
closes a connection silent for three heartbeat intervals: a daemon thread
sends a heartbeat every half interval on the connections idle that long (and
reads the broker's off them), so a producer that calls now and then keeps
its connection (the spares of a burst of parallel callers are closed after
``SPARE_IDLE`` seconds without a call); one idle for two intervals all the
same (the keeper could not run) is replaced instead of being found dead.
Connections made before a ``fork`` are not used in the child.

``InlineCalls`` is the same as an awaitable transport for ``AsyncClient``:
its ``call`` never suspends, so a coroutine of the client made over it runs
to its end in one ``send`` (``run_inline``), in the calling thread. This is
how the sync Client reuses the AsyncClient's code without its event loop.
Leases belong to the connection's session, so receiving and settling stay on
the event loop's connection.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from conveyor.client.connecting import (
    RECONNECT,
    Attempts,
    ConnectionLost,
    address,
    connection_error,
    hello,
    hello_reply_length,
    welcome,
)
from conveyor.client.limits import check_frame, check_request
from conveyor.client.native import NativeTransport
from conveyor.core import wire
from conveyor.core.errors import BrokerClosed, ConveyorError, error_for_code

T = TypeVar("T")


# A request this short fits the socket's send buffer: sending never waits.
SMALL = 64 * 1024

# Seconds a spare connection (not the pool's most recently used) is kept
# alive without a call, once a burst of parallel callers is over.
SPARE_IDLE = 60.0


class Lost(Exception):
    """Internal: the connection died under a call."""


def run_inline(coro: Coroutine[Any, Any, T]) -> T:
    """Run, in this thread, a coroutine whose awaits never suspend."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a blocking call suspended: it needs an event loop")


class Inline:
    """The Portal's counterpart for coroutines that never suspend: ``call``
    runs one to its end in the calling thread."""

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return run_inline(coro)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("closed during the handshake")
        data += chunk
    return data


class _Connection:
    def __init__(self, sock: socket.socket, server_info: dict[str, Any], timeout: float) -> None:
        self.sock = sock
        self.info = server_info  # the broker's limits among them
        self.heartbeat = float(server_info.get("heartbeat", 2.0))
        self.timeout = timeout
        self.frames = wire.FrameReader(int(server_info.get("max_frame", wire.DEFAULT_MAX_FRAME)))
        self.last_used = time.monotonic()  # by a call or a ping
        self.last_call = self.last_used
        self._rid = 0
        sock.settimeout(self.heartbeat / 2)

    def usable(self) -> bool:
        return time.monotonic() - self.last_used < 2 * self.heartbeat

    def ping(self) -> bool:
        """Keep an idle connection alive: a heartbeat out, and the broker's
        heartbeats read off; whether the connection still works."""
        try:
            self.sock.sendall(wire.HEARTBEAT_FRAME)
            while select.select([self.sock], [], [], 0)[0]:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    return False
                self.frames.feed(chunk)  # only heartbeats come to an idle connection
        except (OSError, ConveyorError):
            return False
        self.last_used = time.monotonic()
        return True

    def request(self, op: str, args: dict[str, Any]) -> list[Any]:
        """Send one request; its reply or error frame. A request over the
        broker's limits raises here, unsent."""
        check_request(op, args, self.info)
        data = wire.request(self._rid + 1, op, args)
        check_frame(op, len(data) - 4, self.info)
        self._rid += 1
        try:
            if len(data) <= SMALL:
                self.sock.sendall(data)
            else:  # a big batch may take a busy broker longer to read
                self.sock.settimeout(self.timeout)
                self.sock.sendall(data)
                self.sock.settimeout(self.heartbeat / 2)
            return self.reply(self._rid)
        except OSError as exc:  # socket.timeout included
            raise Lost(repr(exc)) from None
        finally:
            self.last_used = self.last_call = time.monotonic()

    def reply(self, rid: int) -> list[Any]:
        heard = time.monotonic()
        while True:
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                silent = time.monotonic() - heard
                if silent > 3 * self.heartbeat:
                    raise Lost(f"the broker was silent for {silent:.1f}s") from None
                self.sock.sendall(wire.HEARTBEAT_FRAME)
                continue
            if not chunk:
                raise Lost("closed by the broker")
            heard = time.monotonic()
            for frame in self.frames.feed(chunk):
                if frame[0] == wire.ERROR and frame[1] == 0:  # about the connection
                    connection_error(frame)  # a frame error is raised: never sent again
                elif frame[0] in (wire.REPLY, wire.ERROR) and frame[1] == rid:
                    return frame

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class BlockingCalls:
    """The blocking twin of a ``NativeTransport``: the same addresses, token,
    name, TLS context and timeouts; whether the client ever connected is
    shared with it (until then, connecting is tried for ``connect_timeout``)."""

    def __init__(self, native: NativeTransport) -> None:
        self.native = native
        self.addresses = native.addresses
        self.token = native.token
        self.name = native.name
        self.ssl_context = native.ssl_context
        self.timeout = native.timeout
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self._keeper: threading.Thread | None = None

    def connect(self) -> None:
        """Reach the broker now (a bad token or address fails here)."""
        self._give_back(self._take(time.monotonic() + self.timeout))

    def call(self, op: str, args: dict[str, Any]) -> Any:
        """One request; sent again on a new connection if this one dies. An
        error about the connection itself (request id 0: a frame the broker
        could not read) is raised, never a reason to send it again."""
        deadline = time.monotonic() + self.timeout
        lost = 0
        while True:
            conn = self._take(deadline)
            try:
                frame = conn.request(op, args)
            except Lost as exc:
                conn.close()
                lost += 1
                wait = RECONNECT.backoff(lost)
                if time.monotonic() + wait > deadline:
                    raise ConnectionLost(
                        f"{op}: connection lost ({exc}) and not regained"
                    ) from None
                time.sleep(wait)
                continue
            except BaseException:
                conn.close()  # a reply may still come on it: never reuse it
                raise
            self._give_back(conn)
            if frame[0] == wire.REPLY:
                return frame[2]
            raise error_for_code(frame[2], frame[3])

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- the pool -------------------------------------------------------------

    def _take(self, deadline: float) -> _Connection:
        if self._pid != os.getpid():
            self._forked()
        with self._lock:
            if self._closed:
                raise BrokerClosed("the client is closed")
            while self._idle:
                conn = self._idle.pop()
                if conn.usable():
                    return conn
                conn.close()
        return self._connect(deadline)

    def _forked(self) -> None:
        """In a forked child: the parent's connections would mix its replies
        with ours, and its lock may have been held at the fork."""
        self._lock = threading.Lock()
        self._pid = os.getpid()
        inherited, self._idle = self._idle, []
        for conn in inherited:
            conn.close()  # this process's copy of the socket only

    def _give_back(self, conn: _Connection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def _connect(self, deadline: float) -> _Connection:
        if not self.native.connected_once:
            deadline = min(deadline, time.monotonic() + self.native.connect_timeout)
        attempts = Attempts(self.addresses, deadline)
        while True:
            for host, port in self.addresses:
                try:
                    conn = self._connect_once(host, port, attempts.attempt_timeout())
                except (ConveyorError, OSError, EOFError) as exc:
                    attempts.failed(host, port, exc)
                    continue
                self.native.connected_once = True
                return conn
            time.sleep(attempts.pause())

    def _connect_once(self, host: str, port: int, timeout: float) -> _Connection:
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=host)
            sock.sendall(hello(self.token, self.name))
            head = recv_exactly(sock, 5)
            length = hello_reply_length(head, address(host, port))
            info = welcome(wire.decode(head[4:] + recv_exactly(sock, length - 1)))
            conn = _Connection(sock, info, self.timeout)
        except BaseException:
            sock.close()
            raise
        self._start_keeper(conn.heartbeat / 2)
        return conn

    # -- idle connections kept alive --------------------------------------------

    def _start_keeper(self, every: float) -> None:
        with self._lock:
            if self._keeper is None or not self._keeper.is_alive():
                self._keeper = threading.Thread(
                    target=self._keep, args=(every,), name="conveyor-keepalive", daemon=True
                )
                self._keeper.start()

    def _keep(self, every: float) -> None:
        """Every half heartbeat, ping the connections idle that long, so that
        a producer calling now and then finds its connection open instead of
        paying a TCP (and TLS) handshake and a hello first."""
        pid = os.getpid()
        while True:
            time.sleep(every)
            with self._lock:
                if self._closed or self._pid != pid:
                    return
                now = time.monotonic()
                due = [c for c in self._idle if now - c.last_used >= every]
                self._idle = [c for c in self._idle if now - c.last_used < every]
                one_kept = bool(self._idle)  # one in use lately needs no ping
            # The most recently called connection is always kept alive; the
            # spares of a past burst of parallel callers only for a while.
            due.sort(key=lambda c: c.last_call, reverse=True)
            for conn in due:
                keep = not one_kept or now - conn.last_call <= SPARE_IDLE
                one_kept = True
                if keep and conn.ping():
                    self._give_back(conn)
                else:
                    conn.close()


class InlineCalls:
    """``BlockingCalls`` as an AsyncClient transport whose awaits never
    suspend (see ``run_inline``)."""

    def __init__(self, calls: BlockingCalls) -> None:
        self.calls = calls

    async def connect(self) -> None:
        self.calls.connect()

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        return self.calls.call(op, args)

    async def close(self) -> None:
        self.calls.close()
