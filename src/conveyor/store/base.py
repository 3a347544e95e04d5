"""The storage contract: every operation the broker needs, each with a
parameter object, and what a store can do stated as capabilities.

A Store owns durable state and nothing else: it knows no sockets, waiting
consumers or wall clock of its own (``now`` comes in with each operation, so
tests can drive time). Every operation is atomic: it happens whole or not at
all. Batch operations that settle leases (ack, nack, extend, dead) report an
outcome per item; one stale token does not fail its neighbours. Enqueue is all
or nothing across all its queues.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgspec

from conveyor.core.errors import ConveyorError
from conveyor.core.types import (
    Ack,
    Binding,
    Dead,
    Delivery,
    EnqueueResult,
    Extend,
    Message,
    Nack,
    PreparedMessage,
    QueueConfig,
    QueueStats,
    Result,
    SessionInfo,
)


class CommitMeter:
    """What a store's group commit measures, for operations people and
    /metrics (Store.metrics): commits, the operations they carried, and the
    time they took."""

    __slots__ = ("commits", "operations", "seconds", "seconds_max")

    def __init__(self) -> None:
        self.commits = 0
        self.operations = 0
        self.seconds = 0.0
        self.seconds_max = 0.0  # the longest commit since start

    def record(self, operations: int, seconds: float) -> None:
        self.commits += 1
        self.operations += operations
        self.seconds += seconds
        self.seconds_max = max(self.seconds_max, seconds)

    def metrics(self) -> dict[str, float]:
        return {
            "commits_total": self.commits,
            "commit_operations_total": self.operations,
            "commit_seconds_total": self.seconds,
            "commit_seconds_max": self.seconds_max,
        }


class StoreCapabilities(msgspec.Struct, frozen=True):
    """What a store can do, declared rather than discovered by failing."""

    name: str
    shared: bool  # several broker processes may use it at once
    persistent: bool  # state survives the process


class EnqueueOp(msgspec.Struct, frozen=True):
    """Messages for one or more queues, stored together or not at all.

    With an ``idempotency_key`` the reply is remembered until
    ``idempotency_until``; the same key again returns that reply and stores
    nothing (a producer retrying after a lost connection)."""

    batches: list[tuple[str, list[PreparedMessage]]]
    now: float
    idempotency_key: str | None = None
    idempotency_until: float = 0.0


# What a message counts towards a reply's byte budget, besides its body and
# its stored headers (and, for a dead letter, its last error and reason): its
# id, queue, group, dedup key, numbers and field names, all bounded, with room
# to spare. Every store counts a message the same way, in its claim statement
# and in its dead-letter page, so that a reply of what it returns always fits
# the frame it is sent in.
MESSAGE_OVERHEAD = 4096
DEFAULT_MAX_REPLY_BYTES = 16 * 1024 * 1024
# Rows of each kind (expired sessions, leases, TTLs...) one pass of a
# store's sweep takes at most: keeps each monitor transaction short.
SWEEP_LIMIT = 5000


def delivery_size(body: int, headers: int) -> int:
    """What one delivery counts: ``body`` and ``headers`` are the byte
    lengths of the stored body and headers (0: none)."""
    return body + headers + MESSAGE_OVERHEAD


class ClaimOp(msgspec.Struct, frozen=True):
    queue: str
    session: str
    limit: int
    now: float
    visibility: float
    # Buckets the rendezvous ring gives this session; grouped messages come
    # only from those of them that no other session still holds a lease in.
    buckets: list[int]
    # The deliveries' sizes (delivery_size) add up to at most this: the claim
    # stops before the message that would pass it, but always takes the
    # first one, so every message claimed is sent.
    max_bytes: int = DEFAULT_MAX_REPLY_BYTES


class ClaimResult(msgspec.Struct, frozen=True):
    deliveries: list[Delivery]
    # When nothing more is claimable now: the earliest time a scheduled
    # message of the queue becomes ready, if any.
    next_at: float | None
    size: int = 0  # the deliveries' sizes added up (delivery_size)


class SettleOp(msgspec.Struct, frozen=True):
    """Acks, nacks, extensions or dead-letterings of leases, by token."""

    items: list[Ack] | list[Nack] | list[Extend] | list[Dead]
    now: float


class Settled(msgspec.Struct, frozen=True):
    # Per item: None (done), a deadline (extend), or the error for that item.
    outcomes: list[ConveyorError | float | None]
    # Queues where a message may have become claimable or came to be
    # scheduled (a group moved on, a nack): their waiting consumers should
    # look again.
    woken: list[str]


class OpenSessionOp(msgspec.Struct, frozen=True):
    id: str
    name: str
    capacity: int
    timeout: float
    now: float


class Swept(msgspec.Struct, frozen=True):
    """What one pass of the lease monitor changed."""

    sessions_expired: list[str]
    leases_expired: int
    messages_expired: int
    woken: list[str]
    finished: list[str]  # message ids that now have a (dead) result


class Store(Protocol):
    capabilities: StoreCapabilities

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    def set_waker(self, wake: Callable[[str], None]) -> None:
        """Have ``wake(queue)`` called when another process changed the queue
        (a shared store's LISTEN/NOTIFY). A store that is not shared never
        calls it."""
        ...

    # Queues
    async def create_queue(self, config: QueueConfig) -> QueueConfig | None:
        """Create it; None if the name exists (the existing config is untouched)."""
        ...

    async def update_queue(self, config: QueueConfig) -> None: ...
    async def delete_queue(self, name: str) -> None: ...
    async def get_queue(self, name: str) -> QueueConfig: ...
    async def list_queues(self) -> list[QueueConfig]: ...
    async def purge_queue(self, name: str) -> int: ...

    # Messages
    async def enqueue(self, op: EnqueueOp) -> list[list[EnqueueResult]]: ...
    async def claim(self, op: ClaimOp) -> ClaimResult: ...
    async def ack(self, op: SettleOp) -> Settled: ...
    async def nack(self, op: SettleOp) -> Settled: ...
    async def extend(self, op: SettleOp) -> Settled: ...
    async def dead(self, op: SettleOp) -> Settled: ...

    # Consumer sessions
    async def open_session(self, op: OpenSessionOp) -> None: ...
    async def touch_session(self, session: str, now: float) -> bool:
        """Record a heartbeat; False if the session is gone."""
        ...

    async def subscribe(self, session: str, queue: str, now: float) -> None:
        """The session consumes the queue (its claims keep that fresh)."""
        ...

    async def close_session(self, session: str, now: float) -> list[str]:
        """End it and release its leases at once; the queues affected."""
        ...

    async def consumers(self, queue: str, since: float) -> dict[str, int]:
        """Live sessions that tried to claim from the queue at ``since`` or
        later, with their capacity."""
        ...

    async def sessions(self) -> list[SessionInfo]: ...

    # The lease monitor's sweep: expired sessions, leases, TTLs, old dedup
    # keys and results.
    async def sweep(self, now: float) -> Swept: ...

    # Dead letters
    async def dead_letters(
        self, queue: str, limit: int, after: str | None, max_bytes: int = DEFAULT_MAX_REPLY_BYTES
    ) -> list[Message]:
        """Up to ``limit`` dead letters after id ``after``, oldest first, of
        at most ``max_bytes`` counted as delivery_size plus the bytes of
        their last error and reason (always at least one)."""
        ...

    async def redrive(self, queue: str, ids: list[str] | None, now: float) -> int: ...

    # Topics
    async def bind(self, binding: Binding) -> None: ...
    async def unbind(self, binding: Binding) -> bool: ...
    async def bindings(self) -> list[Binding]: ...

    # Results and statistics
    async def get_result(self, message_id: str) -> Result | None: ...
    async def stats(self, queue: str, now: float) -> QueueStats: ...

    def metrics(self) -> dict[str, float]:
        """This process's figures of the store (commits, commit time...):
        names in snake_case, counters ending in _total."""
        ...
