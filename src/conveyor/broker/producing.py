"""What the broker makes of a producer's messages before the store sees them.

``prepare`` validates a batch (size, each message against the broker's
limits) and resolves each message with the broker's clock: its delay becomes
``available_at``, its TTL ``expires_at``, its group the bucket the group
hashes into (core/ring.py). The store then persists the PreparedMessages as
they are, all of them or none.
"""

from __future__ import annotations

from collections.abc import Sequence

from conveyor.broker.config import BrokerConfig
from conveyor.core import validation
from conveyor.core.errors import InvalidArgument
from conveyor.core.ring import bucket_of
from conveyor.core.types import NewMessage, PreparedMessage, QueueConfig


def prepare(
    config: QueueConfig, messages: Sequence[NewMessage], now: float, limits: BrokerConfig
) -> list[PreparedMessage]:
    """The batch for queue ``config``, ready to store; InvalidArgument if
    any of it is wrong (then nothing is stored)."""
    if not messages:
        raise InvalidArgument("an enqueue batch needs at least one message")
    if len(messages) > limits.max_batch:
        raise InvalidArgument(f"a batch holds at most {limits.max_batch} messages")
    prepared = []
    max_body = limits.max_body
    for m in messages:
        if not isinstance(m, NewMessage):
            raise InvalidArgument(f"batch items must be NewMessage, not {type(m).__name__}")
        validation.message(m, max_body)
        prepared.append(
            PreparedMessage(
                bytes(m.body),
                m.priority,
                now + m.delay if m.delay else now,
                now + m.ttl if m.ttl is not None else None,
                m.dedup_key,
                m.group,
                bucket_of(m.group, config.buckets) if m.group is not None else None,
                m.headers or None,
                m.max_attempts,
            )
        )
    return prepared
