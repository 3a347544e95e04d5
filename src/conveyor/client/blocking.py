"""The native protocol over blocking sockets, for the sync Client's calls
that hold no lease (enqueue, publish, queue admin, stats, results...).

Through the event loop thread, each sync call cost two thread wake-ups (the
caller waking the loop, the loop waking the caller): more CPU and wall time
than the broker's own work for an enqueue at durability ``os``. Here the
calling thread writes its request and blocks in ``recv`` for the reply; the
kernel wakes it when the reply arrives. The generated sync Client
(client/sync.py) makes these calls in plain functions, no coroutine or
event loop in between.

The protocol itself (handshake, frames, replies, heartbeats' bookkeeping,
limits, when to send a call again) is connection.py's, shared with the
asyncio transport (native.py); this module moves its bytes on blocking
sockets.

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

Leases belong to the connection's session, so receiving and settling stay
on the event loop's connection (NativeTransport).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time

from conveyor.client.connecting import Attempts, address
from conveyor.client.connection import Answer, Connection, Lost, Resend
from conveyor.client.native import NativeTransport
from conveyor.core.errors import BrokerClosed, ConveyorError

# A request this short fits the socket's send buffer: sending never waits.
SMALL = 64 * 1024

# Seconds a spare connection (not the pool's most recently used) is kept
# alive without a call, once a burst of parallel callers is over.
SPARE_IDLE = 60.0


class _Pooled:
    """A blocking socket and its connection's protocol state; one call at a
    time, by the thread that took it from the pool."""

    def __init__(self, sock: socket.socket, conn: Connection, timeout: float) -> None:
        self.sock = sock
        self.conn = conn  # the broker's limits and heartbeat in its info
        self.timeout = timeout
        self.last_used = time.monotonic()  # by a call or a ping
        self.last_call = self.last_used
        sock.settimeout(conn.beat_every)

    def usable(self) -> bool:
        return time.monotonic() - self.last_used < 2 * self.conn.heartbeat

    def ping(self) -> bool:
        """Keep an idle connection alive: the broker's heartbeats read off,
        a heartbeat out; whether the connection still works."""
        try:
            while select.select([self.sock], [], [], 0)[0]:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    return False
                self.conn.feed(chunk, time.monotonic())  # only heartbeats come to an idle one
            self.sock.sendall(self.conn.beat(time.monotonic()))
        except (OSError, ConveyorError, Lost):
            return False
        self.last_used = time.monotonic()
        return True

    def request(self, op: str, args: dict[str, object]) -> Answer:
        """Send one request and wait for its reply (or the broker's error),
        in the Answer. A request over the broker's limits raises here,
        unsent; Lost if the connection dies under it."""
        answer = Answer()
        _, data = self.conn.request(op, args, answer)
        try:
            self._send(data)
            while not answer.done():
                self._receive()
        except OSError as exc:  # socket.timeout included
            raise Lost(repr(exc)) from None
        finally:
            self.last_used = self.last_call = time.monotonic()
        return answer

    def _send(self, data: bytes) -> None:
        if len(data) <= SMALL:
            self.sock.sendall(data)
            return
        self.sock.settimeout(self.timeout)  # a big batch may take a busy broker longer to read
        self.sock.sendall(data)
        self.sock.settimeout(self.conn.beat_every)

    def _receive(self) -> None:
        try:
            chunk = self.sock.recv(1 << 16)
        except TimeoutError:  # half a heartbeat interval without a word
            self.sock.sendall(self.conn.beat(time.monotonic()))
            return
        if not chunk:
            raise Lost("closed by the broker")
        self.conn.feed(chunk, time.monotonic())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class BlockingCalls:
    """The blocking calls of a ``NativeTransport``'s client: the same
    addresses, token, name, TLS context and timeouts; whether the client
    ever connected is shared with it (until then, connecting is tried for
    ``connect_timeout``). Any thread may call it (``transport.Calls``)."""

    def __init__(self, native: NativeTransport) -> None:
        self.native = native
        self.addresses = native.addresses
        self.token = native.token
        self.name = native.name
        self.ssl_context = native.ssl_context
        self.timeout = native.timeout
        self._idle: list[_Pooled] = []
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self._keeper: threading.Thread | None = None

    def connect(self) -> None:
        """Reach the broker now (a bad token or address fails here)."""
        self._give_back(self._take(time.monotonic() + self.timeout))

    def call(self, op: str, args: dict[str, object]) -> object:
        """One request; sent again on a new connection if this one dies. An
        error about the connection itself (request id 0: a frame the broker
        could not read) is raised, never a reason to send it again."""
        deadline = time.monotonic() + self.timeout
        resend: Resend | None = None  # made on the first loss only
        while True:
            pooled = self._take(deadline)
            try:
                answer = pooled.request(op, args)
            except Lost as exc:
                pooled.close()
                resend = resend or Resend(op, deadline)
                time.sleep(resend.after(exc, time.monotonic()))
                continue
            except BaseException:
                pooled.close()  # a reply may still come on it: never reuse it
                raise
            self._give_back(pooled)
            return answer.value()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for pooled in idle:
            pooled.close()

    # -- the pool -------------------------------------------------------------

    def _take(self, deadline: float) -> _Pooled:
        if self._pid != os.getpid():
            self._forked()
        with self._lock:
            if self._closed:
                raise BrokerClosed("the client is closed")
            while self._idle:
                pooled = self._idle.pop()
                if pooled.usable():
                    return pooled
                pooled.close()
        return self._connect(deadline)

    def _forked(self) -> None:
        """In a forked child: the parent's connections would mix its replies
        with ours, and its lock may have been held at the fork."""
        self._lock = threading.Lock()
        self._pid = os.getpid()
        inherited, self._idle = self._idle, []
        for pooled in inherited:
            pooled.close()  # this process's copy of the socket only

    def _give_back(self, pooled: _Pooled) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(pooled)
                return
        pooled.close()

    def _connect(self, deadline: float) -> _Pooled:
        if not self.native.connected_once:
            deadline = min(deadline, time.monotonic() + self.native.connect_timeout)
        attempts = Attempts(self.addresses, deadline)
        for attempt in attempts:
            time.sleep(attempt.pause)
            with attempt:
                pooled = self._connect_once(*attempt.address, timeout=attempt.timeout)
                self.native.connected_once = True
                return pooled
        raise attempts.unreachable()

    def _connect_once(self, host: str, port: int, *, timeout: float) -> _Pooled:
        sock = socket.create_connection((host, port), timeout=timeout)
        conn = Connection(
            address(host, port), token=self.token, name=self.name, heartbeat=self.native.heartbeat
        )
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=host)
            sock.sendall(conn.hello())
            while not conn.ready:  # the socket's timeout bounds each wait: the attempt's
                if not (answer := sock.recv(1 << 16)):
                    raise EOFError("closed during the handshake")
                conn.feed(answer, time.monotonic())
            pooled = _Pooled(sock, conn, self.timeout)
        except BaseException:
            sock.close()
            raise
        self._start_keeper(conn.beat_every)
        return pooled

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
                due = [p for p in self._idle if now - p.last_used >= every]
                self._idle = [p for p in self._idle if now - p.last_used < every]
                one_kept = bool(self._idle)  # one in use lately needs no ping
            # The most recently called connection is always kept alive; the
            # spares of a past burst of parallel callers only for a while.
            due.sort(key=lambda p: p.last_call, reverse=True)
            for pooled in due:
                keep = not one_kept or now - pooled.last_call <= SPARE_IDLE
                one_kept = True
                if keep and pooled.ping():
                    self._give_back(pooled)
                else:
                    pooled.close()
