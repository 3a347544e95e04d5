"""Queue-level steps of the PostgreSQL store: settings, re-bucketing,
redriving dead letters, and reading them back as messages."""

from __future__ import annotations

from typing import Any

import msgspec

from conveyor.core.errors import QueueNotFound
from conveyor.core.ids import format_id
from conveyor.core.ring import bucket_of
from conveyor.core.types import Message, MessageState, QueueConfig
from conveyor.store.postgres import driver
from conveyor.store.postgres.messages import BLOCKED, HEAD_RACES, READY
from conveyor.store.postgres.node import config_from
from conveyor.store.postgres.queries import Q

_decode_headers = msgspec.json.Decoder(dict[str, str]).decode


async def existing(conn: driver.Connection, queue: str) -> QueueConfig:
    row = await conn.fetchrow(Q.queue_get, queue)
    if row is None:
        raise QueueNotFound(f"no queue named {queue!r}")
    return config_from(*row)


async def rebucket(conn: driver.Connection, config: QueueConfig) -> None:
    """The bucket count changed: hash every group of the queue anew (a message
    left in a bucket beyond the count would never be delivered), and let the
    holders of grouped leases own their groups' new buckets."""
    groups = [g for (g,) in await conn.fetch(Q.groups_of_queue, config.name)]
    buckets = [bucket_of(g, config.buckets) for g in groups]
    await conn.execute(Q.rebucket, config.name, groups, buckets)
    await conn.execute(Q.owners_reset, config.name, config.buckets)
    await conn.execute(Q.owners_from_leases, config.name)


async def redrive_one(
    conn: driver.Connection, queue: str, seq: int, grp: str | None, now: float
) -> None:
    """Make one dead letter ready again, or blocked behind its group's head,
    held FOR SHARE (as an enqueue holds it) so that the head cannot finish
    before the redrive commits. A head that another transaction makes
    meanwhile wins (unique index): the message then looks again."""
    if grp is None:
        await conn.execute(Q.redrive_one, seq, READY, now)
        return
    for _ in range(HEAD_RACES):
        if await conn.fetchval(Q.group_has_head, queue, grp):
            await conn.execute(Q.redrive_one, seq, BLOCKED, now)
            return
        try:
            async with conn.transaction():  # a savepoint
                await conn.execute(Q.redrive_one, seq, READY, now)
            return
        except Exception as exc:
            if not driver.is_unique_violation(exc):
                raise
    raise driver.RetryTransaction("group heads were made and finished meanwhile, again and again")


def dead_message(queue: str, config: QueueConfig, row: Any) -> Message:
    (seq, body, headers, priority, grp, dedup_key, attempts, max_attempts, enqueued_at,
     available_at, expires_at, last_error, dead_reason, dead_at) = row  # fmt: skip
    return Message(
        id=format_id(seq),
        queue=queue,
        state=MessageState.DEAD,
        body=body,
        headers=_decode_headers(headers) if headers is not None else {},
        priority=priority,
        group=grp,
        dedup_key=dedup_key,
        attempts=attempts,
        max_attempts=max_attempts or config.max_attempts,
        enqueued_at=enqueued_at,
        available_at=available_at,
        expires_at=expires_at,
        last_error=last_error,
        dead_reason=dead_reason,
        dead_at=dead_at,
    )
