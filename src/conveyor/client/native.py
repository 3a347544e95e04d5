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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

from conveyor.client.connecting import (
    Attempts,
    BrokerUnreachable,
    ConnectionLost,
    address,
    connection_error,
    hello,
    hello_reply_length,
    welcome,
)
from conveyor.client.limits import check_frame, check_request
from conveyor.core import wire
from conveyor.core.errors import BrokerClosed, ConveyorError, error_for_code

log = logging.getLogger("conveyor.client")

__all__ = ["BrokerUnreachable", "ConnectionLost", "NativeTransport"]


class _Lost(Exception):
    """Internal: the current connection died under a call."""


RELEASED = "released unhandled: the consumer was closed"

PushHandler = Callable[[list[Any] | ConveyorError], None]


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
        self.heartbeat = heartbeat
        self.server_info: dict[str, Any] = {}
        # Whether this client (or its blocking twin) ever reached the broker:
        # until then a connection is tried for connect_timeout, not timeout.
        self.connected_once = False
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_rid = 1
        # Subscriptions by id. The client chooses the id and the server pushes
        # under it, so a push that overtakes the `consume` reply still finds
        # its handler; subscriptions are opened again after a reconnect, but
        # for those whose first `consume` is still under way (``_opening``).
        self._specs: dict[int, tuple[str, int, PushHandler]] = {}
        self._opening: set[int] = set()
        self._next_sub = 1
        self._received = False  # a receive was made: this client consumes
        self._releases: set[asyncio.Task[None]] = set()
        self._connected = asyncio.Event()
        self._connector: asyncio.Task[None] | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._last_in = time.monotonic()  # when the broker last sent anything
        self._closed = False
        self._generation = 0  # bumped on every new connection

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
            await asyncio.wait_for(asyncio.shield(connector), wait)
        except TimeoutError:
            raise ConnectionLost(
                f"the connection was lost and not regained within {self.timeout:g}s"
            ) from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._closed and current is not None and not current.cancelling():
                raise BrokerClosed("the client is closed") from None  # not our caller's cancel
            raise

    def _start_connecting(self) -> asyncio.Task[None]:
        """The one task that (re)connects, started if none runs."""
        if self._connector is None or self._connector.done():
            if not self.connected_once:
                deadline: float | None = time.monotonic() + self.connect_timeout
            elif self._consumes() and self._generation > 0:
                deadline = None  # a consumer reconnects for as long as it is open
            else:
                deadline = time.monotonic() + self.timeout
            self._connector = asyncio.get_running_loop().create_task(self._reach(deadline))
            self._connector.add_done_callback(self._connector_done)
        return self._connector

    async def _reach(self, deadline: float | None) -> None:
        attempts = Attempts(self.addresses, deadline)
        while True:
            for host, port in self.addresses:
                try:
                    await asyncio.wait_for(
                        self._connect_once(host, port), attempts.attempt_timeout()
                    )
                except (ConveyorError, OSError, EOFError) as exc:
                    attempts.failed(host, port, exc)
                    continue
                attempts.succeeded(host, port)
                return
            await asyncio.sleep(attempts.pause())

    def _connector_done(self, task: asyncio.Task[None]) -> None:
        """A connector that gave up (a token refused after a broker restart,
        say) ends the subscriptions: their consume loops raise its error."""
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, ConveyorError) and not self._closed:
            specs, self._specs = self._specs, {}
            for _, _, handler in specs.values():
                handler(exc)

    async def _connect_once(self, host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=self.ssl_context, limit=1 << 20
        )
        try:
            writer.write(hello(self.token, self.name))
            head = await reader.readexactly(5)
            length = hello_reply_length(head, address(host, port))
            info = welcome(wire.decode(head[4:] + await reader.readexactly(length - 1)))
        except BaseException:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            raise
        self.server_info = info
        frames = wire.FrameReader(int(info.get("max_frame", wire.DEFAULT_MAX_FRAME)))
        self._writer = writer
        self._generation += 1
        loop = asyncio.get_running_loop()
        self._reader_task = loop.create_task(self._read(reader, frames, self._generation))
        self._beat_task = loop.create_task(self._beat(self._generation))
        self._connected.set()
        self.connected_once = True
        log.debug("connected to %s", address(host, port))
        self._reopen_subscriptions()

    def _reopen_subscriptions(self) -> None:
        """Open the subscriptions again on a new connection. Their `consume`
        requests are pipelined, not awaited: a failure ends the subscription
        (its queue was deleted meanwhile, say); a lost connection leaves it
        to the next one."""
        for sub, (queue, prefetch, _) in list(self._specs.items()):
            if sub not in self._opening:
                args = {"queue": queue, "prefetch": prefetch, "sub": sub}
                _, future = self._request("consume", args)
                future.add_done_callback(functools.partial(self._reopened, sub))

    def _reopened(self, sub: int, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if isinstance(exc, ConveyorError):
            spec = self._specs.pop(sub, None)
            if spec is not None:
                spec[2](exc)

    def _lost(self, generation: int, why: str, error: ConveyorError | None = None) -> None:
        """The connection of ``generation`` is gone: calls in flight fail with
        ``error`` (a frame error: never sent again) or are sent again on the
        next connection; a consumer starts reconnecting at once."""
        if generation != self._generation or not self._connected.is_set():
            return
        self._connected.clear()
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        if self._beat_task is not None:
            self._beat_task.cancel()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error if error is not None else _Lost(why))
        if self._closed:
            return
        if self._consumes():
            log.info("connection lost: %s; reconnecting", why)
            self._start_connecting()
        else:
            log.info("connection lost: %s", why)

    async def close(self) -> None:
        if self._releases:  # hand back what was released before closing
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._releases, return_exceptions=True), 1.0)
        self._closed = True
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connector
        writer = self._writer
        self._lost(self._generation, "closed by the client")
        if writer is not None:  # let the transport finish closing on this loop
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        for task in (self._reader_task, self._beat_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- the connection's tasks ------------------------------------------------

    async def _read(
        self, reader: asyncio.StreamReader, frames: wire.FrameReader, generation: int
    ) -> None:
        # A silent broker is noticed by _beat, which aborts the connection:
        # no timer per read on this path.
        try:
            while True:
                chunk = await reader.read(1 << 16)
                self._last_in = time.monotonic()
                if not chunk:
                    raise OSError("closed by the broker")
                for frame in frames.feed(chunk):
                    self._dispatch(frame)
        except asyncio.CancelledError:
            raise
        except ConveyorError as exc:  # a frame error: the stream cannot be trusted
            log.warning("connection dropped: %s: %s", exc.code, exc.message)
            self._lost(generation, f"{exc.code}: {exc.message}", exc)
        except OSError as exc:
            self._lost(generation, str(exc) or repr(exc))

    def _dispatch(self, frame: list[Any]) -> None:
        kind = frame[0]
        if kind in (wire.REPLY, wire.ERROR):
            if kind == wire.ERROR and frame[1] == 0:  # about the connection
                connection_error(frame)
                return
            future = self._pending.pop(frame[1], None)
            if future is None or future.done():
                return
            if kind == wire.REPLY:
                future.set_result(frame[2])
            else:
                future.set_exception(error_for_code(frame[2], frame[3]))
        elif kind == wire.PUSH:
            spec = self._specs.get(frame[1])
            if spec is None:  # pushed before the server saw our `cancel`
                self.release(frame[2])
            else:
                spec[2](frame[2])
        elif kind == wire.SUB_END:
            spec = self._specs.pop(frame[1], None)
            if spec is not None:
                spec[2](error_for_code(frame[2], frame[3]))

    def release(self, deliveries: list[Any]) -> None:
        """Hand back deliveries nobody will handle (their consumer is gone):
        a nack without delay, in the background. Like a lease released when
        a session ends, the delivery counts as an attempt."""
        items = [
            {"id": d["id"], "token": d["token"], "delay": 0.0, "error": RELEASED}
            for d in deliveries
        ]
        if not items or self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._release(items))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, items: list[dict[str, Any]]) -> None:
        try:
            await self.call("nack", {"items": items})
        except ConveyorError as exc:  # the session ended: the broker released them
            log.debug("releasing %d deliveries: %s", len(items), exc)

    async def _beat(self, generation: int) -> None:
        heartbeat = float(self.server_info.get("heartbeat", self.heartbeat))
        self._last_in = time.monotonic()
        while generation == self._generation and self._writer is not None:
            await asyncio.sleep(heartbeat / 2)
            if self._writer is None or generation != self._generation:
                return
            silent = time.monotonic() - self._last_in
            if silent > 3 * heartbeat:
                self._lost(generation, f"the broker was silent for {silent:.1f}s")
                return
            self._writer.write(wire.HEARTBEAT_FRAME)

    # -- calls ----------------------------------------------------------------

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        """One request; sent again on a new connection if this one dies."""
        deadline = time.monotonic() + self.timeout
        if op == "receive":
            self._received = True
        while True:
            await self._ensure_connected(deadline)
            try:
                return await self._send(op, args)
            except _Lost as exc:
                if time.monotonic() > deadline:
                    raise ConnectionLost(
                        f"{op}: connection lost ({exc}) and not regained"
                    ) from None

    async def _send(self, op: str, args: dict[str, Any]) -> Any:
        rid, future = self._request(op, args)
        try:
            writer = self._writer
            if writer is not None and writer.transport.get_write_buffer_size() > 1 << 20:
                try:
                    await writer.drain()
                except OSError as exc:
                    raise _Lost(str(exc) or repr(exc)) from None
            return await future
        finally:
            self._pending.pop(rid, None)

    def _request(self, op: str, args: dict[str, Any]) -> tuple[int, asyncio.Future[Any]]:
        """Write one request; the future of its reply. A request over the
        broker's limits raises here, unsent."""
        writer = self._writer
        if writer is None:
            raise _Lost("not connected")
        check_request(op, args, self.server_info)
        rid = self._next_rid
        data = wire.request(rid, op, args)
        check_frame(op, len(data) - 4, self.server_info)
        self._next_rid += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        writer.write(data)
        return rid, future

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
            with contextlib.suppress(ConveyorError, _Lost):
                await self._send("cancel", {"sub": sub})
