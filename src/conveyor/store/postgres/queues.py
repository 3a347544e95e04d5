"""Queue-level steps of the PostgreSQL store: settings, re-bucketing,
redriving dead letters."""

from __future__ import annotations

from conveyor.core.errors import QueueNotFound
from conveyor.core.ring import bucket_of
from conveyor.core.transitions import after_redrive
from conveyor.core.types import QueueConfig
from conveyor.store.mapping import queue_config
from conveyor.store.postgres import driver
from conveyor.store.postgres.messages import HEAD_RACES
from conveyor.store.postgres.queries import Q


async def existing(conn: driver.Connection, queue: str) -> QueueConfig:
    row = await conn.fetchrow(Q.queue_get, queue)
    if row is None:
        raise QueueNotFound(f"no queue named {queue!r}")
    return queue_config(*row)


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
        await conn.execute(Q.redrive_one, seq, after_redrive(behind_head=False), now)
        return
    for _ in range(HEAD_RACES):
        if await conn.fetchval(Q.group_has_head, queue, grp):
            await conn.execute(Q.redrive_one, seq, after_redrive(behind_head=True), now)
            return
        try:
            async with conn.transaction():  # a savepoint
                await conn.execute(Q.redrive_one, seq, after_redrive(behind_head=False), now)
            return
        except Exception as exc:
            if not driver.is_unique_violation(exc):
                raise
    raise driver.RetryTransaction("group heads were made and finished meanwhile, again and again")
