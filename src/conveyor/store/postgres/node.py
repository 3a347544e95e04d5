"""What one node of the PostgreSQL store keeps between operations, and the
per-transaction bookkeeping every transition shares."""

from __future__ import annotations

import msgspec

from conveyor.core.transitions import token_floor
from conveyor.core.types import QueueConfig
from conveyor.store.effects import TOTALS, Effects
from conveyor.store.mapping import queue_config
from conveyor.store.postgres import driver
from conveyor.store.postgres.queries import Q


class NodeState:
    """This node's identity (for its own notifications), its epoch (for
    fencing tokens), and parsed queue settings. Settings are re-read from the
    database by every operation that needs them: another node may change them."""

    def __init__(self, node: str, epoch: int, channel: str) -> None:
        self.node = node
        self.epoch = epoch
        self.channel = channel
        self._parsed: dict[tuple[str, str], QueueConfig] = {}
        # Whether each queue had a max_length when last read (how to lock it).
        self.bounded: dict[str, bool] = {}

    @property
    def token_floor(self) -> int:
        """The least fencing token of a delivery made by this node."""
        return token_floor(self.epoch)

    def settings(self, name: str, text: str, created_at: float = 0.0) -> QueueConfig:
        key = (name, text)
        config = self._parsed.get(key)
        if config is None:
            if len(self._parsed) > 10_000:
                self._parsed.clear()
            config = self._parsed[key] = queue_config(name, text, 0.0)
        self.bounded[name] = config.max_length is not None
        if created_at:
            config = msgspec.structs.replace(config, created_at=created_at)
        return config

    async def configs(self, conn: driver.Connection, names: set[str]) -> dict[str, QueueConfig]:
        if not names:
            return {}
        rows = await conn.fetch(Q.queues_many, sorted(names))
        return {name: self.settings(name, text) for name, text, _ in rows}


class CountDeltas(Effects):
    """Effects written as delta rows, appended at the end of the transaction
    and folded by the lease monitor later (nodes write at once; a row updated
    in place by each would serialise them): per queue, its change of depth
    (messages it holds, dead letters aside) before the totals; acks per
    session. Besides the queues woken (returned to the broker, and announced
    to the other nodes), ``notify`` names queues only announced: this node's
    broker wakes its own consumers after an enqueue."""

    __slots__ = ("acked_by", "notify")
    LEADING = 1  # depth

    def __init__(self) -> None:
        super().__init__()
        self.acked_by: dict[str, int] = {}
        self.notify: set[str] = set()

    def depth(self, queue: str, n: int) -> None:
        self.counters(queue)[0] += n

    @property
    def changed(self) -> set[str]:
        """The queues to announce to the other nodes once committed."""
        return self.woken | self.notify

    async def flush(self, conn: driver.Connection) -> None:
        """Write the deltas in one statement (a round trip), and start afresh."""
        if not (self.by_queue or self.acked_by):
            return
        queues = sorted(self.by_queue)
        columns = [[self.by_queue[q][i] for q in queues] for i in range(self.LEADING + len(TOTALS))]
        sessions = sorted(self.acked_by)
        await conn.execute(
            Q.effects, queues, *columns, sessions, [self.acked_by[s] for s in sessions]
        )
        self.by_queue.clear()
        self.acked_by.clear()
