"""How many bytes a reply may carry, and the budget that holds them.

A receive, a push, a dead-letter page or a result carries message bodies; the
broker asks the store for no more than fits in its byte budget, counted as the
store counts (``store.base.delivery_size``): the frame that carries the reply
then stays within the frame limit, and every message claimed is sent.

A front end that bounds what each client can make it hold (the native
server) passes a ``ReplyBudget``: the broker reserves bytes from it just
before it reads messages from the store (not while a long poll waits), and
gives back what the reply turned out not to need; the front end releases the
rest once the reply is sent. Without one, a reply may carry up to
``BrokerConfig.max_reply_bytes``.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from conveyor.core.validation import MAX_HEADERS_BYTES
from conveyor.store.base import MESSAGE_OVERHEAD

# Characters of a nack's error or a dead-lettering's reason: a dead letter
# carries both, and must fit in a reply.
MAX_REASON = 64 * 1024
# The stored JSON of the largest headers: a character takes up to 6 bytes
# escaped, and each pair adds its quotes and separators.
STORED_HEADERS_MAX = 10 * MAX_HEADERS_BYTES
_UTF8_MAX = 4  # bytes of one character


class ReplySizes(msgspec.Struct, frozen=True):
    """The most one item of a reply can count, for a given max_body."""

    delivery: int
    dead_letter: int
    result: int

    @classmethod
    def of(cls, max_body: int) -> ReplySizes:
        reasons = 2 * _UTF8_MAX * MAX_REASON  # a last error and a reason
        delivery = max_body + STORED_HEADERS_MAX + MESSAGE_OVERHEAD
        return cls(delivery, delivery + reasons, max_body + reasons + MESSAGE_OVERHEAD)


class ReplyBudget(Protocol):
    async def reserve(self, want: int, at_least: int) -> int:
        """Reserve between ``at_least`` and ``want`` bytes (as many as there
        is room for), waiting until there is room for ``at_least``."""
        ...

    def keep(self, reserved: int, used: int) -> None:
        """Of ``reserved`` bytes, the reply needs ``used``: give back the
        rest (or take more, for a message stored under a larger max_body)."""
        ...
