"""BrokerConfig: the broker's settings, each with its documented default."""

from __future__ import annotations

import msgspec

from conveyor.broker.replies import ReplySizes
from conveyor.core.errors import InvalidArgument
from conveyor.store.base import DEFAULT_MAX_REPLY_BYTES


class BrokerConfig(msgspec.Struct, frozen=True, kw_only=True):
    max_body: int = 1 << 20  # bytes per message body
    max_batch: int = 10_000  # messages per enqueue_many / settle batch
    max_receive: int = 1_000  # messages per receive
    max_wait: float = 60.0  # longest long-poll a receive may ask for
    session_timeout: float = 10.0  # default heartbeat timeout of a session
    monitor_interval: float = 0.25  # seconds between lease monitor sweeps
    config_max_age: float = 1.0  # how long cached queue configs/bindings are trusted
    consumer_idle: float = 30.0  # a session that has not received for this long owns no buckets
    idempotency_window: float = 300.0  # how long a producer's retry key is remembered
    # Bytes of messages one reply may carry (receive, push, dead-letter page),
    # counted as the store counts them; the frame limit is this plus a margin.
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES

    # A long-poll looks at its queue again after this many seconds even without
    # a change it heard of (another node may have freed a bucket), and a short
    # claim is trusted to stand for no longer than this.
    recheck_interval: float = 1.0

    def __post_init__(self) -> None:
        largest = ReplySizes.of(self.max_body).dead_letter
        if self.max_reply_bytes < largest:
            raise InvalidArgument(
                f"max_reply_bytes ({self.max_reply_bytes}) must hold the largest dead letter"
                f" that max_body {self.max_body} allows ({largest} bytes)"
            )
