"""The client side of the native protocol: one TCP connection, pipelined
requests, pushed deliveries, heartbeats, and reconnection.

Requests carry ids; any number may be in flight, and their replies are
matched by id. If the connection is lost, calls in flight wait for a new
one (tried with exponential backoff over every address given, for up to
``timeout`` seconds) and are sent again: enqueues carry an idempotency key,
so a retried enqueue is not stored twice; a retried ack whose lease was
released meanwhile answers LeaseLost, like any late ack. Subscriptions are
opened again on the new connection; deliveries received on the old one can
no longer be settled there (their session ended and released them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable
from typing import Any

from conveyor.core import wire
from conveyor.core.errors import BrokerClosed, ConveyorError, error_for_code, register_error

log = logging.getLogger("conveyor.client")


@register_error
class ConnectionLost(ConveyorError):
    """The connection to the broker was lost and could not be made again in time."""

    code = "connection_lost"


class _Lost(Exception):
    """Internal: the current connection died under a call."""


# Handshake errors that a new attempt cannot mend.
FATAL_CODES = frozenset({"unauthorized", "protocol_error"})


class Backoff:
    """Delays between attempts to reach the broker, until a deadline."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.delay = 0.05

    def next(self) -> float | None:
        """Seconds to wait before the next attempt; None once out of time."""
        if time.monotonic() + self.delay > self.deadline:
            return None
        wait = self.delay * random.uniform(0.5, 1.0)
        self.delay = min(self.delay * 2, 2.0)
        return wait


def hello(token: str | None, name: str) -> bytes:
    """The bytes that open a connection: the preamble and the hello request."""
    args = {"version": wire.VERSION, "token": token, "name": name}
    return wire.PREAMBLE + wire.request(0, "hello", args)


def attempt_failed(errors: list[str], host: str, port: int, exc: Exception) -> None:
    """Note why an address could not be reached; raise what a new attempt
    cannot mend (a bad token, a broker speaking another protocol)."""
    if isinstance(exc, ConveyorError):
        if exc.code in FATAL_CODES:
            raise exc
        errors.append(f"{host}:{port}: {exc.message}")
    else:
        errors.append(f"{host}:{port}: {exc!r}")


def welcome(frame: list[Any]) -> dict[str, Any]:
    """The server's facts from its reply to hello, or the error it sent."""
    if frame[0] == wire.ERROR:
        raise error_for_code(frame[2], frame[3])
    return dict(frame[2])


def unreachable(timeout: float, errors: list[str]) -> ConnectionLost:
    return ConnectionLost(f"cannot reach the broker within {timeout:g}s: " + "; ".join(errors[-3:]))


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
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_rid = 1
        # Subscriptions by id. The client chooses the id and the server pushes
        # under it, so a push that overtakes the `consume` reply still finds
        # its handler; subscriptions are opened again after a reconnect.
        self._specs: dict[int, tuple[str, int, PushHandler]] = {}
        self._next_sub = 1
        self._releases: set[asyncio.Task[None]] = set()
        self._connected = asyncio.Event()
        self._connecting: asyncio.Task[None] | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._last_in = time.monotonic()  # when the broker last sent anything
        self._closed = False
        self._generation = 0  # bumped on every new connection

    # -- connecting ---------------------------------------------------------

    async def connect(self) -> None:
        await self._ensure_connected()

    async def _ensure_connected(self) -> None:
        if self._closed:
            raise BrokerClosed("the client is closed")
        if self._connected.is_set():
            return
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._connect_loop())
        await asyncio.shield(self._connecting)

    async def _connect_loop(self) -> None:
        # The first connection has connect_timeout; a lost one is sought
        # again for the whole timeout.
        budget = self.timeout if self._generation else self.connect_timeout
        backoff = Backoff(budget)
        errors: list[str] = []
        while True:
            for host, port in self.addresses:
                try:
                    await self._connect_once(host, port)
                    return
                except (ConveyorError, OSError, asyncio.IncompleteReadError) as exc:
                    attempt_failed(errors, host, port, exc)
            wait = backoff.next()
            if wait is None:
                raise unreachable(budget, errors)
            await asyncio.sleep(wait)

    async def _connect_once(self, host: str, port: int) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=self.ssl_context, limit=1 << 20), 5.0
        )
        try:
            writer.write(hello(self.token, self.name))
            frames_reader = wire.FrameReader()
            frame: list[Any] | None = None
            while frame is None:
                chunk = await asyncio.wait_for(reader.read(1 << 16), 5.0)
                if not chunk:
                    raise OSError("connection closed during the handshake")
                frames = frames_reader.feed(chunk)
                frame = frames[0] if frames else None
            self.server_info = welcome(frame)
        except BaseException:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            raise
        self._writer = writer
        self._generation += 1
        self._reader_task = asyncio.get_running_loop().create_task(
            self._read(reader, frames_reader, self._generation)
        )
        self._beat_task = asyncio.get_running_loop().create_task(self._beat(self._generation))
        self._connected.set()
        log.debug("connected to %s:%d", host, port)
        for local in list(self._specs):
            asyncio.get_running_loop().create_task(self._open_subscription(local))

    def _lost(self, generation: int, why: str) -> None:
        if generation != self._generation or not self._connected.is_set():
            return
        log.info("connection lost: %s", why)
        self._connected.clear()
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        if self._beat_task is not None:
            self._beat_task.cancel()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(_Lost(why))

    async def close(self) -> None:
        if self._releases:  # hand back what was released before closing
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._releases, return_exceptions=True), 1.0)
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
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
        except (TimeoutError, OSError, ConveyorError) as exc:
            self._lost(generation, repr(exc))

    def _dispatch(self, frame: list[Any]) -> None:
        kind = frame[0]
        if kind in (wire.REPLY, wire.ERROR):
            future = self._pending.pop(frame[1], None)
            if future is None or future.done():
                if kind == wire.ERROR:
                    log.warning("broker: %s: %s", frame[2], frame[3])
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
        while True:
            await self._ensure_connected()
            try:
                return await self._send(op, args)
            except _Lost as exc:
                if time.monotonic() > deadline:
                    raise ConnectionLost(
                        f"{op}: connection lost ({exc}) and not regained"
                    ) from None

    async def _send(self, op: str, args: dict[str, Any]) -> Any:
        writer = self._writer
        if writer is None:
            raise _Lost("not connected")
        rid = self._next_rid
        self._next_rid += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        writer.write(wire.request(rid, op, args))
        if writer.transport.get_write_buffer_size() > 1 << 20:
            await writer.drain()
        try:
            return await future
        finally:
            self._pending.pop(rid, None)

    async def subscribe(self, queue: str, prefetch: int, handler: PushHandler) -> int:
        """Have deliveries of ``queue`` pushed to ``handler``, at most
        ``prefetch`` unsettled at once; the subscription's id."""
        # Connect first: a new connection opens every registered subscription
        # itself, and this one would then be opened twice.
        await self._ensure_connected()
        sub = self._next_sub
        self._next_sub += 1
        self._specs[sub] = (queue, prefetch, handler)
        try:
            await self._open_subscription(sub, raise_errors=True)
        except BaseException:
            self._specs.pop(sub, None)
            raise
        return sub

    async def _open_subscription(self, sub: int, *, raise_errors: bool = False) -> None:
        spec = self._specs.get(sub)
        if spec is None:
            return
        queue, prefetch, handler = spec
        try:
            await self.call("consume", {"queue": queue, "prefetch": prefetch, "sub": sub})
        except ConveyorError as exc:
            if raise_errors:
                raise
            self._specs.pop(sub, None)
            handler(exc)

    async def unsubscribe(self, sub: int) -> None:
        """End a subscription; deliveries still on their way are released."""
        if self._specs.pop(sub, None) is not None and self._connected.is_set():
            with contextlib.suppress(ConveyorError, _Lost):
                await self._send("cancel", {"sub": sub})
