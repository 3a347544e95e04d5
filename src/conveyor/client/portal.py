"""A private event loop in a daemon thread, for the sync client.

The sync ``Client`` runs the AsyncClient's calls that hold a lease (receive,
consume, the settles) on this loop: each submits the coroutine and blocks
the calling thread until it finishes. One portal per Client; any thread may
call through it. Its other calls go through ``sync_calls``: blocking
sockets in the calling thread for a remote broker, this loop for an
embedded one (``PortalCalls``), which lives on it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from conveyor.client.blocking import BlockingCalls
from conveyor.client.native import NativeTransport
from conveyor.client.transport import Calls, Transport

T = TypeVar("T")


class Portal:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="conveyor-client", daemon=True
        )
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a sync Client cannot be called from its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def iterate(self, source: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self.call(_next(source))
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                self.call(aclose())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _next(source: AsyncIterator[T]) -> T:
    return await source.__anext__()


class PortalCalls:
    """``transport.Calls`` over a transport that lives on the portal's loop
    (an embedded broker): each call runs there, the caller waits."""

    def __init__(self, portal: Portal, transport: Transport) -> None:
        self.portal = portal
        self.transport = transport

    def connect(self) -> None:
        self.portal.call(self.transport.connect())

    def call(self, op: str, args: dict[str, object]) -> object:
        return self.portal.call(self.transport.call(op, args))

    def close(self) -> None:
        """Nothing of its own: the transport closes with its AsyncClient."""


def sync_calls(transport: Transport, portal: Portal) -> Calls:
    """How a sync Client makes its calls that hold no lease: on blocking
    sockets of their own in the calling thread for a remote broker, on the
    portal's loop for an embedded one."""
    if isinstance(transport, NativeTransport):
        return BlockingCalls(transport)
    return PortalCalls(portal, transport)
