"""Rows as the values the broker sees, and the stored form of what is read
back (headers, queue settings): one mapping for both stores.

Each function reads one shape of row, and both stores' SQL selects that
shape's columns in the one order its docstring names (queries.sql of each
dialect), so a column added or moved is changed here and in both SELECTs,
never in two mappings. Where a store gathers a row from several
statements (SQLite's statistics), it passes the pieces in that order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import msgspec

from conveyor.core.ids import format_id
from conveyor.core.transitions import effective_max_attempts
from conveyor.core.types import (
    QUEUE_SETTINGS,
    Delivery,
    Message,
    MessageState,
    QueueConfig,
    QueueStats,
    Result,
    ResultStatus,
    SessionInfo,
)
from conveyor.store.base import delivery_size

# A message's headers as both stores keep them: JSON bytes, NULL for none.
encode_headers = msgspec.json.Encoder().encode
decode_headers = msgspec.json.Decoder(dict[str, str]).decode


class Row(Protocol):
    """A row as either driver gives it (a tuple, an asyncpg Record)."""

    def __getitem__(self, index: int, /) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...


def settings_text(config: QueueConfig) -> str:
    """A queue's settings as stored (the ``config`` column): JSON, sorted."""
    return json.dumps({f: getattr(config, f) for f in QUEUE_SETTINGS}, sort_keys=True)


def queue_config(name: str, settings: str, created_at: float) -> QueueConfig:
    """name, config, created_at of the queues table."""
    return QueueConfig(name=name, created_at=created_at, **json.loads(settings))


def deliveries(
    queue: str, rows: list[Row], deadline: float, lease: float, config: QueueConfig
) -> tuple[list[Delivery], int, set[int]]:
    """The rows a claim leased (seq, body, headers, priority, grp, attempts,
    max_attempts, token, enqueued_at, available_at, bucket), sorted here
    into delivery order (RETURNING gives them in none): the deliveries,
    their delivery_size added up, and the buckets of the grouped ones."""
    rows.sort(key=lambda r: (-r[3], r[9], r[0]))
    out = []
    size = 0
    buckets: set[int] = set()
    for (seq, body, headers, priority, grp, attempts, max_attempts, token, enqueued_at, _,
         bucket) in rows:  # fmt: skip
        out.append(
            Delivery(
                id=format_id(seq),
                queue=queue,
                body=body,
                headers=decode_headers(headers) if headers is not None else {},
                priority=priority,
                group=grp,
                attempts=attempts,
                max_attempts=effective_max_attempts(max_attempts, config),
                token=token,
                deadline=deadline,
                lease=lease,
                enqueued_at=enqueued_at,
            )
        )
        size += delivery_size(len(body), len(headers) if headers is not None else 0)
        if grp is not None:
            buckets.add(bucket)
    return out, size, buckets


def dead_letter(queue: str, config: QueueConfig, row: Row) -> Message:
    """seq, body, headers, priority, grp, dedup_key, attempts, max_attempts,
    enqueued_at, available_at, expires_at, last_error, dead_reason, dead_at."""
    (seq, body, headers, priority, grp, dedup_key, attempts, max_attempts, enqueued_at,
     available_at, expires_at, last_error, dead_reason, dead_at) = row  # fmt: skip
    return Message(
        id=format_id(seq),
        queue=queue,
        state=MessageState.DEAD,
        body=body,
        headers=decode_headers(headers) if headers is not None else {},
        priority=priority,
        group=grp,
        dedup_key=dedup_key,
        attempts=attempts,
        max_attempts=effective_max_attempts(max_attempts, config),
        enqueued_at=enqueued_at,
        available_at=available_at,
        expires_at=expires_at,
        last_error=last_error,
        dead_reason=dead_reason,
        dead_at=dead_at,
    )


def result(message_id: str, row: Row) -> Result:
    """status, body, error, finished_at of the results table."""
    status, body, error, finished_at = row
    return Result(
        id=message_id, status=ResultStatus(status), body=body, error=error, finished_at=finished_at
    )


def sessions(
    rows: Iterable[Row], leases: Iterable[Row], consumers: Iterable[Row]
) -> list[SessionInfo]:
    """``rows``: id, name, capacity, timeout, created_at, last_seen,
    delivered_total, acked_total; ``leases``: holder, leases held;
    ``consumers``: session, queue."""
    held: dict[str, int] = {holder: n for holder, n in leases}
    queues: dict[str, list[str]] = {}
    for session, queue in consumers:
        queues.setdefault(session, []).append(queue)
    return [
        SessionInfo(
            id=sid,
            name=name,
            capacity=capacity,
            timeout=timeout,
            created_at=created_at,
            last_seen=last_seen,
            queues=sorted(queues.get(sid, [])),
            leases=held.get(sid, 0),
            delivered_total=delivered,
            acked_total=acked,
        )
        for sid, name, capacity, timeout, created_at, last_seen, delivered, acked in rows
    ]


def queue_stats(
    queue: str, counts: Row, consumers: int, oldest_ready: float | None, now: float
) -> QueueStats:
    """``counts``: the queue's messages in each state, in MessageState order
    (ready, scheduled, leased, dead, blocked), then its running totals in
    store/effects.py's TOTALS order. A blocked message counts as ready: it
    is waiting its turn, not its time."""
    (ready, scheduled, leased, dead, blocked, enqueued, delivered, acked, nacked, dead_total,
     expired, lease_expired) = counts  # fmt: skip
    return QueueStats(
        queue=queue,
        ready=ready + blocked,
        scheduled=scheduled,
        leased=leased,
        dead=dead,
        consumers=consumers,
        oldest_ready_age=None if oldest_ready is None else max(0.0, now - oldest_ready),
        enqueued_total=enqueued,
        delivered_total=delivered,
        acked_total=acked,
        nacked_total=nacked,
        dead_total=dead_total,
        expired_total=expired,
        lease_expired_total=lease_expired,
    )
