"""The client side of the native protocol: one TCP connection, pipelined
requests, pushed deliveries, heartbeats, and reconnection.

Connecting (connecting.py). A client that has never reached its broker
tries every address of its URL in turn, rounds of attempts apart by
``RECONNECT``'s backoff, for ``connect_timeout`` seconds (1 by default),
then raises BrokerUnreachable, which names every address with the reason it
failed and what to check. What a new attempt cannot mend is raised at once:
a wrong token (Unauthorized), a peer that does not speak the protocol
(ProtocolError; an HTTP port is named as such).

Reconnecting. Requests carry ids; any number may be in flight, and their
replies are matched by id. If the connection is lost, calls in flight wait
for a new one (for up to ``timeout`` seconds) and are sent again: enqueues
carry an idempotency key, so a retried enqueue is not stored twice; a
retried ack whose lease was released meanwhile answers LeaseLost, like any
late ack. A client that consumes (it holds a subscription, or has received)
does not wait for a call: a task of its own reconnects in the background for
as long as the client is open, logging each attempt (INFO), once a WARNING
when the broker has been gone for ``DOWN_WARNING`` seconds, and INFO when it
is back; its subscriptions are then opened again. Deliveries received on the
old connection were released when its session ended: settling one succeeds
only while its token is still current.

Limits. Every request is checked against the limits the broker announced in
its hello reply before it is sent (limits.py), and frames are read up to the
broker's ``max_frame``. A frame error on the connection (the broker's error
frame with request id 0, or a frame this side cannot read) fails the calls
in flight with that typed error and is never a reason to send them again.

The protocol itself (handshake, frames, matching replies to requests,
heartbeats' bookkeeping, limits, when to send a call again) is
connection.py's, shared with the blocking transport; this module moves its
bytes on asyncio streams and owns the tasks that do it (a ``TaskSet``: the
connector, each connection's reader and heartbeat, releases), all cancelled
and awaited on close.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from typing import Any

from conveyor.client.connecting import Attempts, BrokerUnreachable, ConnectionLost, address
from conveyor.client.connection import Connection, Lost, Resend
from conveyor.client.transport import PushHandler
from conveyor.core.errors import BrokerClosed, ConveyorError
from conveyor.core.tasks import TaskSet

log = logging.getLogger("conveyor.client")

__all__ = ["BrokerUnreachable", "ConnectionLost", "NativeTransport"]



class _Link:
    """The live connection: its protocol state, the stream it writes to,
    and the task that sends its heartbeats."""

    __slots__ = ("beater", "conn", "writer")

    def __init__(self, conn: Connection, writer: asyncio.StreamWriter) -> None:
        self.conn = conn
        self.writer = writer
        self.beater: asyncio.Task[None] | None = None


class NativeTransport:
    def __init__(
        self,
        addresses: list[tuple[str, int]],
        *,
        token: str | None = None,
        name: str = "",
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 1.0,
        heartbeat: float = 2.0,
    ) -> None:
        if not addresses:
            raise ValueError("at least one address")
        self.addresses = addresses
        self.token = token
        self.name = name
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat  # until the broker announces its own
        self.server_info: dict[str, Any] = {}
        # Whether this client (or its blocking calls) ever reached the broker:
        # until then a connection is tried for connect_timeout, not timeout.
        self.connected_once = False
        self._link: _Link | None = None  # None while not connected
        self._connections = 0  # made by this transport so far
        # Subscriptions by id. The client chooses the id and the server pushes
        # under it, so a push that overtakes the `consume` reply still finds
        # its handler; subscriptions are opened again after a reconnect, but
        # for those whose first `consume` is still under way (``_opening``).
        self._specs: dict[int, tuple[str, int, PushHandler]] = {}
        self._opening: set[int] = set()
        self._next_sub = 1
        self._received = False  # a receive was made: this client consumes
        self._connected = asyncio.Event()
        self._connector: asyncio.Task[ConveyorError | None] | None = None
        self._tasks = TaskSet("conveyor client connection")  # connector, readers, heartbeats
        self._releases = TaskSet("conveyor client releases")
        self._closed = False

    # -- connecting ---------------------------------------------------------

    async def connect(self) -> None:
        await self._ensure_connected(time.monotonic() + self.timeout)

    def _consumes(self) -> bool:
        return bool(self._specs) or self._received

    async def _ensure_connected(self, deadline: float) -> None:
        if self._closed:
            raise BrokerClosed("the client is closed")
        if self._connected.is_set():
            return
        connector = self._start_connecting()
        # A first connection is bounded by connect_timeout, in the connector:
        # its BrokerUnreachable says more than a call running out of time.
        wait = max(0.0, deadline - time.monotonic()) if self.connected_once else None
        try:
            error = await asyncio.wait_for(asyncio.shield(connector), wait)
        except TimeoutError:
            raise ConnectionLost(
                f"the connection was lost and not regained within {self.timeout:g}s"
            ) from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._closed and current is not None and not current.cancelling():
                raise BrokerClosed("the client is closed") from None  # not our caller's cancel
            raise
        if error is not None:
            raise error

    def _start_connecting(self) -> asyncio.Task[ConveyorError | None]:
        """The one task that (re)connects, started if none runs."""
        if self._connector is None or self._connector.done():
            if not self.connected_once:
                deadline: float | None = time.monotonic() + self.connect_timeout
            elif self._consumes() and self._connections > 0:
                deadline = None  # a consumer reconnects for as long as it is open
            else:
                deadline = time.monotonic() + self.timeout
            self._connector = self._tasks.spawn(self._reach(deadline))
            self._connector.add_done_callback(self._connector_done)
        return self._connector

    async def _reach(self, deadline: float | None) -> ConveyorError | None:
        """Connect; None once connected, else the error it gave up with
        (returned, not raised: every caller waiting for it raises it)."""
        attempts = Attempts(self.addresses, deadline)
        try:
            for attempt in attempts:
                await asyncio.sleep(attempt.pause)
                with attempt:
                    await asyncio.wait_for(self._connect_once(*attempt.address), attempt.timeout)
                    return None
        except ConveyorError as exc:  # what a new attempt cannot mend: a bad token...
            return exc
        return attempts.unreachable()

    def _connector_done(self, task: asyncio.Task[ConveyorError | None]) -> None:
        """A connector that gave up (a token refused after a broker restart,
        say) ends the subscriptions: their consume loops raise its error."""
        if task.cancelled():
            return
        exc = task.result()
        if exc is not None and not self._closed:
            specs, self._specs = self._specs, {}
            for _, _, handler in specs.values():
                handler(exc)

    async def _connect_once(self, host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=self.ssl_context, limit=1 << 20
        )
        where = address(host, port)
        conn = Connection(
            where,
            token=self.token,
            name=self.name,
            heartbeat=self.heartbeat,
            on_push=self._pushed,
            on_end=self._ended,
        )
        try:
            writer.write(conn.hello())
            while not conn.ready:
                answer = await reader.read(1 << 16)
                if not answer:
                    raise EOFError("closed during the handshake")
                conn.feed(answer, time.monotonic())
        except BaseException:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            raise
        link = self._link = _Link(conn, writer)
        self._connections += 1
        self.server_info = conn.info
        self._tasks.spawn(self._read(link, reader))
        link.beater = self._tasks.spawn(self._beat(link))
        self._connected.set()
        self.connected_once = True
        log.debug("connected to %s", where)
        self._reopen_subscriptions(link)

    def _reopen_subscriptions(self, link: _Link) -> None:
        """Open the subscriptions again on a new connection. Their `consume`
        requests are pipelined, not awaited: a failure ends the subscription
        (its queue was deleted meanwhile, say); a lost connection leaves it
        to the next one."""
        loop = asyncio.get_running_loop()
        for sub, (queue, prefetch, _) in list(self._specs.items()):
            if sub not in self._opening:
                args = {"queue": queue, "prefetch": prefetch, "sub": sub}
                future: asyncio.Future[object] = loop.create_future()
                link.writer.write(link.conn.request("consume", args, future)[1])
                future.add_done_callback(functools.partial(self._reopened, sub))

    def _reopened(self, sub: int, future: asyncio.Future[object]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if isinstance(exc, ConveyorError):
            spec = self._specs.pop(sub, None)
            if spec is not None:
                spec[2](exc)

    def _lost(self, link: _Link, why: str, error: ConveyorError | None = None) -> None:
        """The connection ``link`` is gone: calls in flight fail with
        ``error`` (a frame error: never sent again) or are sent again on the
        next connection; a consumer starts reconnecting at once."""
        if link is not self._link:
            return
        self._link = None
        self._connected.clear()
        link.writer.close()
        if link.beater is not None:
            link.beater.cancel()
        link.conn.fail(why, error)
        if self._closed:
            return
        if self._consumes():
            log.info("connection lost: %s; reconnecting", why)
            self._start_connecting()
        else:
            log.info("connection lost: %s", why)

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):  # hand back what was released before closing
            await asyncio.wait_for(self._releases.wait(), 1.0)
        self._closed = True
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connector
        link = self._link
        if link is not None:
            self._lost(link, "closed by the client")
            with contextlib.suppress(Exception):  # let the transport finish closing on this loop
                await asyncio.wait_for(link.writer.wait_closed(), 1.0)
        await self._tasks.close()
        await self._releases.close()

    # -- the connection's tasks ------------------------------------------------

    async def _read(self, link: _Link, reader: asyncio.StreamReader) -> None:
        # A silent broker is noticed by _beat, which aborts the connection:
        # no timer per read on this path.
        try:
            while True:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    raise OSError("closed by the broker")
                link.conn.feed(chunk, time.monotonic())
        except ConveyorError as exc:  # a frame error: the stream cannot be trusted
            log.warning("connection dropped: %s: %s", exc.code, exc.message)
            self._lost(link, f"{exc.code}: {exc.message}", exc)
        except OSError as exc:
            self._lost(link, str(exc) or repr(exc))

    async def _beat(self, link: _Link) -> None:
        while link is self._link:
            await asyncio.sleep(link.conn.beat_every)
            if link is not self._link:
                return
            try:
                heartbeat = link.conn.beat(time.monotonic())
            except Lost as exc:  # the broker was silent too long
                self._lost(link, str(exc))
                return
            link.writer.write(heartbeat)

    def _pushed(self, sub: int, deliveries: list[Any]) -> None:
        spec = self._specs.get(sub)
        if spec is None:  # pushed before the server saw our `cancel`
            self.release(deliveries)
        else:
            spec[2](deliveries)

    def _ended(self, sub: int, error: ConveyorError) -> None:
        spec = self._specs.pop(sub, None)
        if spec is not None:
            spec[2](error)

    def release(self, deliveries: list[Any]) -> None:
        """Hand back deliveries nobody will handle (their consumer is gone),
        in the background: ready again at once, not counted as attempts (a
        nack of undelivered ones)."""
        items = [{"id": d["id"], "token": d["token"], "undelivered": True} for d in deliveries]
        if items and not self._closed:
            self._releases.spawn(self._release(items))

    async def _release(self, items: list[dict[str, Any]]) -> None:
        try:
            await self.call("nack", {"items": items})
        except ConveyorError as exc:  # the session ended: the broker released them
            log.debug("releasing %d deliveries: %s", len(items), exc)

    # -- calls ----------------------------------------------------------------

    async def call(self, op: str, args: dict[str, object]) -> object:
        """One request; sent again on a new connection if this one dies
        (connection.Resend decides until when)."""
        if op == "receive":
            self._received = True
        deadline = time.monotonic() + self.timeout
        resend: Resend | None = None  # made on the first loss only: most calls have none
        while True:
            await self._ensure_connected(deadline)
            try:
                return await self._send(op, args)
            except Lost as exc:
                resend = resend or Resend(op, deadline)
                await asyncio.sleep(resend.after(exc, time.monotonic()))

    async def _send(self, op: str, args: dict[str, object]) -> object:
        link = self._link
        if link is None:
            raise Lost("not connected")
        # Written here, not in a helper: this is every call's path.
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        rid, data = link.conn.request(op, args, future)  # over a limit: raises, unsent
        writer = link.writer
        writer.write(data)
        try:
            if writer.transport.get_write_buffer_size() > 1 << 20:
                try:
                    await writer.drain()
                except OSError as exc:
                    raise Lost(str(exc) or repr(exc)) from None
            return await future
        finally:
            if not future.done():  # cancelled: its reply, if any, is dropped
                link.conn.forget(rid)

    async def subscribe(self, queue: str, prefetch: int, handler: PushHandler) -> int:
        """Have deliveries of ``queue`` pushed to ``handler``, at most
        ``prefetch`` unsettled at once; the subscription's id."""
        sub = self._next_sub
        self._next_sub += 1
        self._specs[sub] = (queue, prefetch, handler)
        # Until its first `consume` is answered, a new connection does not
        # open this subscription: the call below sends it again itself.
        self._opening.add(sub)
        try:
            await self.call("consume", {"queue": queue, "prefetch": prefetch, "sub": sub})
        except BaseException:
            self._specs.pop(sub, None)
            raise
        finally:
            self._opening.discard(sub)
        return sub

    async def unsubscribe(self, sub: int) -> None:
        """End a subscription; deliveries still on their way are released."""
        if self._specs.pop(sub, None) is not None and self._connected.is_set():
            with contextlib.suppress(ConveyorError, Lost):
                await self._send("cancel", {"sub": sub})
