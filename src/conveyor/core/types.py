"""The values that pass between the layers: messages, deliveries, outcomes,
queue configuration and statistics.

They are msgspec structs: cheap to build on the hot path, and encodable as
they are by the wire codec. Times are Unix seconds as floats.
"""

from __future__ import annotations

import enum
from typing import TypedDict

import msgspec


class MessageState(enum.IntEnum):
    READY = 0  # may be delivered now
    SCHEDULED = 1  # delayed or backing off: not visible before available_at
    LEASED = 2  # held by one consumer session until its lease deadline
    DEAD = 3  # in the queue's dead-letter list
    BLOCKED = 4  # in a group, waiting behind the group's head (counted as ready)


class QueueConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A queue and its settings. Every field but ``name`` has a default."""

    name: str
    visibility_timeout: float = 30.0  # lease length of one delivery
    max_attempts: int = 5  # deliveries before a failing message is dead-lettered
    max_length: int | None = None  # ready+scheduled+leased; None: unbounded
    dedup_window: float = 300.0  # how long a dedup_key is remembered
    retry_base: float = 1.0  # first retry delay after a nack
    retry_max: float = 300.0  # cap of the exponential backoff
    retry_jitter: float = 0.2  # +- fraction of randomness on each delay
    buckets: int = 64  # group buckets, spread over live consumer sessions
    result_ttl: float = 86400.0  # how long an ack's result is kept
    created_at: float = 0.0


QUEUE_SETTINGS = (
    "visibility_timeout",
    "max_attempts",
    "max_length",
    "dedup_window",
    "retry_base",
    "retry_max",
    "retry_jitter",
    "buckets",
    "result_ttl",
)


class NewMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A message as a producer asks for it, before validation."""

    body: bytes
    priority: int = 0
    delay: float | None = None
    ttl: float | None = None
    dedup_key: str | None = None
    group: str | None = None
    headers: dict[str, str] | None = None
    max_attempts: int | None = None


class MessageOptions(TypedDict, total=False):
    """NewMessage's fields but its body, as keyword arguments
    (``Broker.enqueue(queue, body, **options)``); a test keeps the two equal."""

    priority: int
    delay: float | None
    ttl: float | None
    dedup_key: str | None
    group: str | None
    headers: dict[str, str] | None
    max_attempts: int | None


class PreparedMessage(msgspec.Struct, frozen=True):
    """A validated message with its times and bucket resolved, ready to store."""

    body: bytes
    priority: int
    available_at: float
    expires_at: float | None
    dedup_key: str | None
    group: str | None
    bucket: int | None
    headers: dict[str, str] | None
    max_attempts: int | None


class EnqueueResult(msgspec.Struct, frozen=True):
    id: str
    duplicate: bool = False


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One leased message, handed to one consumer session."""

    id: str
    queue: str
    body: bytes
    headers: dict[str, str]
    priority: int
    group: str | None
    attempts: int  # this delivery included
    max_attempts: int
    token: int  # fencing token of this lease
    deadline: float  # lease deadline, broker clock
    lease: float  # seconds the lease lasts from its grant (for the consumer's own clock)
    enqueued_at: float


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """A stored message as inspection (dead letters, peeking) shows it."""

    id: str
    queue: str
    state: MessageState
    body: bytes
    headers: dict[str, str]
    priority: int
    group: str | None
    dedup_key: str | None
    attempts: int
    max_attempts: int
    enqueued_at: float
    available_at: float
    expires_at: float | None
    last_error: str | None
    dead_reason: str | None
    dead_at: float | None


class Ack(msgspec.Struct, frozen=True):
    id: str
    token: int
    result: bytes | None = None


class Nack(msgspec.Struct, frozen=True):
    id: str
    token: int
    delay: float | None = None  # None: the queue's backoff policy decides
    error: str | None = None
    # Never handed to the code that handles it (a consumer closed with it
    # unread, a worker stopping before it ran it): ready again at once, and
    # the delivery does not count as an attempt.
    undelivered: bool = False


class Extend(msgspec.Struct, frozen=True):
    id: str
    token: int
    seconds: float  # new deadline = now + seconds


class Dead(msgspec.Struct, frozen=True):
    id: str
    token: int
    reason: str


class ResultStatus(enum.StrEnum):
    OK = "ok"
    DEAD = "dead"


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """What became of a message: its ack's result, or why it was dead-lettered."""

    id: str
    status: ResultStatus
    body: bytes | None
    error: str | None
    finished_at: float


class QueueStats(msgspec.Struct, frozen=True, kw_only=True):
    queue: str
    ready: int
    scheduled: int
    leased: int
    dead: int
    consumers: int
    oldest_ready_age: float | None  # seconds the oldest ready message has waited
    enqueued_total: int
    delivered_total: int
    acked_total: int
    nacked_total: int
    dead_total: int
    expired_total: int
    lease_expired_total: int


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    capacity: int
    timeout: float
    created_at: float
    last_seen: float
    queues: list[str]
    leases: int  # leases held now
    delivered_total: int
    acked_total: int


class Binding(msgspec.Struct, frozen=True):
    pattern: str
    queue: str
