"""What one store operation changed besides its rows: the idea both stores
share, each completing it with what it counts and how it writes it.

Every operation gathers, per queue, a row of counters to add at its end
(the store's own columns first, then the running totals of ``TOTALS``,
in that order, as QueueStats reports them), the queues whose waiting
consumers should look again, and the ids of the messages that got a
result. SQLite keeps each queue's count of messages per state exact in
its row (store/sqlite/messages.py, ``StateCounts``); PostgreSQL appends
delta rows of depth and totals that the monitor folds, as several nodes
write at once (store/postgres/node.py, ``CountDeltas``).
"""

from __future__ import annotations

from typing import ClassVar

TOTALS = ("enqueued", "delivered", "acked", "nacked", "dead", "expired", "lease_expired")
_TOTAL_AT = {name: at for at, name in enumerate(TOTALS)}


class Effects:
    """What one operation changed besides rows (see above); a store's
    subclass says how many counters of its own lead each queue's row, and
    writes the rows at the operation's end."""

    __slots__ = ("by_queue", "finished", "woken")
    LEADING: ClassVar[int] = 0  # the store's own counters, before the totals

    def __init__(self) -> None:
        self.by_queue: dict[str, list[int]] = {}
        self.woken: set[str] = set()
        self.finished: list[str] = []

    def counters(self, queue: str) -> list[int]:
        row = self.by_queue.get(queue)
        if row is None:
            row = self.by_queue[queue] = [0] * (self.LEADING + len(TOTALS))
        return row

    def add(self, queue: str, total: str, n: int = 1) -> None:
        """Add ``n`` to the queue's running ``total`` (one of TOTALS)."""
        self.counters(queue)[self.LEADING + _TOTAL_AT[total]] += n
