"""What one node of the PostgreSQL store keeps between operations, and the
per-operation bookkeeping every transition shares."""

from __future__ import annotations

import json
from typing import Any

from conveyor.core.types import QUEUE_SETTINGS, QueueConfig
from conveyor.store.postgres import driver
from conveyor.store.postgres.queries import Q

TOKENS_PER_EPOCH = 1_000_000_000


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
        return self.epoch * TOKENS_PER_EPOCH

    def settings(self, name: str, text: str, created_at: float = 0.0) -> QueueConfig:
        key = (name, text)
        config = self._parsed.get(key)
        if config is None:
            if len(self._parsed) > 10_000:
                self._parsed.clear()
            config = self._parsed[key] = config_from(name, text, 0.0)
        self.bounded[name] = config.max_length is not None
        if created_at:
            config = QueueConfig(**{**fields_of(config), "created_at": created_at})
        return config

    async def configs(self, conn: driver.Connection, names: set[str]) -> dict[str, QueueConfig]:
        if not names:
            return {}
        rows = await conn.fetch(Q.queues_many, sorted(names))
        return {name: self.settings(name, text) for name, text, _ in rows}


def fields_of(config: QueueConfig) -> dict[str, Any]:
    return {f: getattr(config, f) for f in (*QUEUE_SETTINGS, "name", "created_at")}


def settings_text(config: QueueConfig) -> str:
    return json.dumps({f: getattr(config, f) for f in QUEUE_SETTINGS}, sort_keys=True)


def config_from(name: str, text: str, created_at: float) -> QueueConfig:
    return QueueConfig(name=name, created_at=created_at, **json.loads(text))


class Effects:
    """What one transaction changed besides rows: per-queue totals and acks
    per session (appended as delta rows at its end), queues whose consumers
    should look again (here, and on other nodes once it committed), and
    message ids that got a result."""

    __slots__ = ("acked_by", "by_queue", "finished", "notify", "woken")
    FIELDS = (
        "depth",
        "enqueued",
        "delivered",
        "acked",
        "nacked",
        "dead",
        "expired",
        "lease_expired",
    )

    def __init__(self) -> None:
        self.by_queue: dict[str, list[int]] = {}
        self.acked_by: dict[str, int] = {}
        self.woken: set[str] = set()  # returned to the broker, and notified
        self.notify: set[str] = set()  # notified only (the broker wakes its own)
        self.finished: list[str] = []

    def add(self, queue: str, field: str, n: int = 1) -> None:
        row = self.by_queue.get(queue)
        if row is None:
            row = self.by_queue[queue] = [0] * len(self.FIELDS)
        row[self.FIELDS.index(field)] += n

    @property
    def changed(self) -> set[str]:
        """The queues to announce to the other nodes once committed."""
        return self.woken | self.notify

    async def flush(self, conn: driver.Connection) -> None:
        """Write the totals in one statement (a round trip), and start afresh."""
        if not (self.by_queue or self.acked_by):
            return
        queues = sorted(self.by_queue)
        columns = [[self.by_queue[q][i] for q in queues] for i in range(len(self.FIELDS))]
        sessions = sorted(self.acked_by)
        await conn.execute(
            Q.effects, queues, *columns, sessions, [self.acked_by[s] for s in sessions]
        )
        self.by_queue.clear()
        self.acked_by.clear()
