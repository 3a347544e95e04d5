"""What a client needs of its way to a broker, declared once.

``Transport`` is what ``AsyncClient`` runs on, on an event loop:
``NativeTransport`` (native.py: the native protocol over TCP, pipelined,
reconnecting) and ``EmbeddedTransport`` (embedded.py: a broker in this
process). ``Calls`` is what the sync ``Client`` runs its calls that hold no
lease on, in the calling thread: ``BlockingCalls`` (blocking.py: the native
protocol over blocking sockets, sharing the protocol logic of
connection.py) or ``PortalCalls`` (portal.py: an embedded broker's
transport, on the client's event loop thread). Calls that hold a lease
(receive, consume and the settles) stay on the ``Transport``: leases belong
to its session.

A call is an operation name and its arguments (docs/protocol.md); its
result is what the broker answered (decoded MessagePack from a remote
broker, the broker's own values from an embedded one), which AsyncClient
converts to the public types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from conveyor.core.errors import ConveyorError

# Receives the deliveries pushed to a subscription (each a decoded map or a
# core.types.Delivery), or the error that ended it.
PushHandler = Callable[[Sequence[object] | ConveyorError], None]


class Transport(Protocol):
    """A broker connection for AsyncClient, on an event loop."""

    @property
    def server_info(self) -> Mapping[str, object]:
        """What the broker announced: its name, limits, heartbeat."""
        ...

    async def connect(self) -> None:
        """Reach the broker now (a bad token or address fails here)."""
        ...

    async def close(self) -> None: ...

    async def call(self, op: str, args: dict[str, object]) -> object:
        """One operation; its result, or the broker's typed error raised."""
        ...

    async def subscribe(self, queue: str, prefetch: int, handler: PushHandler) -> int:
        """Have deliveries of ``queue`` pushed to ``handler``, at most
        ``prefetch`` unsettled at once; the subscription's id."""
        ...

    async def unsubscribe(self, sub: int) -> None:
        """End a subscription; deliveries still on their way are released."""
        ...


class Calls(Protocol):
    """The sync Client's calls that hold no lease, made in the calling thread."""

    def connect(self) -> None: ...

    def call(self, op: str, args: dict[str, object]) -> object: ...

    def close(self) -> None: ...
