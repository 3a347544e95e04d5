"""Message ids: 64-bit integers ``(unix milliseconds << 20) | counter``.

Unique per store, time-ordered, and ordered like enqueue order, so a store can
use the id as its primary key and enqueue order at once. Outside the store an
id is its 16-digit lowercase hex form, which sorts like the number.
"""

from __future__ import annotations

from conveyor.core.errors import InvalidArgument

_COUNTER_BITS = 20


def format_id(seq: int) -> str:
    return f"{seq:016x}"


_HEX = frozenset("0123456789abcdefABCDEF")


def parse_id(value: object) -> int:
    # int(..., 16) alone would also take signs, spaces and underscores. Ids
    # are signed 64-bit in every store: the top digit is at most 7.
    if (
        isinstance(value, str)
        and len(value) == 16
        and _HEX.issuperset(value)
        and value[0] in "01234567"
    ):
        return int(value, 16)
    shown = repr(value[:40]) if isinstance(value, str) else type(value).__name__
    raise InvalidArgument(
        f"bad message id {shown}: 16 hexadecimal digits, at most 7fffffffffffffff"
    )


def id_time(message_id: str) -> float:
    """The Unix time (seconds) an id was made at."""
    return (parse_id(message_id) >> _COUNTER_BITS) / 1000.0


class IdSequence:
    """Makes ever-growing ids from a clock; not thread-safe (one writer uses it)."""

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def next(self, now: float) -> int:
        candidate = int(now * 1000) << _COUNTER_BITS
        self.last = candidate if candidate > self.last else self.last + 1
        return self.last
