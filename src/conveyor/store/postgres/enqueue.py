"""Enqueue, a group-commit round at a time.

Every enqueue of the round is decided first, in order, from a few reads
(stored replies of idempotency keys, the queues' settings and depths, dedup
keys, group heads); an enqueue that cannot be stored whole (QueueNotFound,
QueueFull) is refused then, before anything is written, and the rest go on.
Then the round writes: dedup keys, idempotency replies, every message in one
INSERT, the totals. Ids come from ``next_ids`` before the transaction
begins (see the schema), one block for the whole round.

Races with other nodes, and how each ends:
  - a queue deleted or reconfigured meanwhile: the queues written to are held
    FOR KEY SHARE (FOR UPDATE when they have a max_length, so that one enqueue at
    a time checks and adds to the depth), and a group's bucket is computed
    from the settings read under that lock, not from the caller's;
  - a dedup or idempotency key stored by another node after the read: the
    conditional upsert reports it, and the round runs again (RetryTransaction);
  - a group head made by another transaction after the read: the insert
    leaves the would-be head out (unique index), and it is inserted as blocked
    behind the head that won, once that head is held FOR SHARE (see
    _insert_rows); every member queued behind a head holds that head until it
    commits, so the head's ack or dead-lettering promotes it in its turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from conveyor.core.errors import ConveyorError, QueueNotFound
from conveyor.core.ids import format_id
from conveyor.core.ring import bucket_of
from conveyor.core.transitions import BLOCKED, check_room, initial_state
from conveyor.core.types import EnqueueResult, PreparedMessage, QueueConfig
from conveyor.store.base import EnqueueOp
from conveyor.store.mapping import encode_headers
from conveyor.store.postgres.driver import RetryTransaction
from conveyor.store.postgres.messages import HEAD_RACES
from conveyor.store.postgres.node import CountDeltas, NodeState
from conveyor.store.postgres.queries import Q

if TYPE_CHECKING:
    from conveyor.store.postgres.driver import Connection
    from conveyor.store.postgres.writer import Job

_replies = msgspec.msgpack.Decoder(list[list[EnqueueResult]])
Replies = list[list[EnqueueResult]]
Row = tuple[Any, ...]  # the 13 columns of messages_insert


async def allocate_ids(conn: Connection, jobs: list[Job]) -> int:
    """The first of enough consecutive ids for every message of the round,
    in a short transaction of its own (before the round's)."""
    ops: list[EnqueueOp] = [job.op for job in jobs]
    count = sum(len(messages) for op in ops for _, messages in op.batches)
    floor = int(max(op.now for op in ops) * 1000) << 20
    row = await conn.fetchrow(Q.next_ids, count, floor)
    assert row is not None
    return int(row[1])


@dataclass
class Reads:
    """What the round read before deciding."""

    replies: dict[str, bytes]
    configs: dict[str, QueueConfig]
    depths: dict[str, int]
    dedup: dict[tuple[str, str], int]
    heads: set[tuple[str, str]]


@dataclass
class Plan:
    """What the round will write, grown one accepted enqueue at a time."""

    next_id: int
    rows: list[Row] = field(default_factory=list)
    dedup: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    heads: set[tuple[str, str]] = field(default_factory=set)
    added: dict[str, int] = field(default_factory=dict)  # messages per queue
    replies: dict[str, tuple[Replies, float]] = field(default_factory=dict)


async def enqueue_round(
    conn: Connection, node: NodeState, jobs: list[Job], first_id: int, fx: CountDeltas
) -> None:
    ops: list[EnqueueOp] = [job.op for job in jobs]
    reads = await _read(conn, node, ops)
    plan = Plan(first_id)
    for job, op in zip(jobs, ops, strict=True):
        key = op.idempotency_key
        if key is not None and key in reads.replies:
            job.succeed(_replies.decode(reads.replies[key]))
        elif key is not None and key in plan.replies:
            job.succeed(plan.replies[key][0])
        else:
            try:
                job.succeed(_decide(op, reads, plan))
            except ConveyorError as exc:
                job.fail(exc)
    await _write(conn, plan, max(op.now for op in ops), fx)


async def _read(conn: Connection, node: NodeState, ops: list[EnqueueOp]) -> Reads:
    keyed = [(op.idempotency_key, op.now) for op in ops if op.idempotency_key is not None]
    replies: dict[str, bytes] = {}
    if keyed:
        rows = await conn.fetch(
            Q.idempotency_find, [k for k, _ in keyed], [now for _, now in keyed]
        )
        replies = {key: reply for key, reply in rows}
    names = sorted({q for op in ops for q, _ in op.batches})
    # Queues with a max_length are locked FOR UPDATE, the others FOR KEY
    # SHARE. Which is which this node knows from the last time it read their
    # settings; a queue given a max_length since is locked again, FOR UPDATE
    # (an upgrade: if two nodes do it at once, one deadlocks and runs again).
    bounded = [n for n in names if node.bounded.get(n)]
    shared = [n for n in names if not node.bounded.get(n)]
    configs: dict[str, QueueConfig] = {}
    for query, chosen in ((Q.queues_lock, bounded), (Q.queues_share, shared)):
        if chosen:
            for name, text in await conn.fetch(query, chosen):
                configs[name] = node.settings(name, text)
    late = [n for n in shared if n in configs and configs[n].max_length is not None]
    if late:
        await conn.fetch(Q.queues_lock, late)
    limited = sorted(n for n, c in configs.items() if c.max_length is not None)
    depths: dict[str, int] = {}
    if limited:
        depths = {q: int(d) for q, d in await conn.fetch(Q.queue_depths, limited)}
    dedup = await _read_dedup(conn, ops, configs)
    groups = sorted(
        {(q, m.group) for op in ops for q, ms in op.batches for m in ms if m.group is not None}
    )
    heads: set[tuple[str, str]] = set()
    if groups:
        rows = await conn.fetch(Q.heads_share, [q for q, _ in groups], [g for _, g in groups])
        heads = {(q, g) for q, g in rows}
    return Reads(replies, configs, depths, dedup, heads)


async def _read_dedup(
    conn: Connection, ops: list[EnqueueOp], configs: dict[str, QueueConfig]
) -> dict[tuple[str, str], int]:
    wanted: dict[tuple[str, str], float] = {}
    for op in ops:
        for queue, messages in op.batches:
            config = configs.get(queue)
            if config is None or config.dedup_window <= 0:
                continue
            for m in messages:
                if m.dedup_key is not None:
                    wanted.setdefault((queue, m.dedup_key), op.now)
    if not wanted:
        return {}
    keys = list(wanted)
    rows = await conn.fetch(
        Q.dedup_find, [q for q, _ in keys], [k for _, k in keys], [wanted[k] for k in keys]
    )
    return {(q, k): seq for q, k, seq in rows}


class Tentative:
    """One enqueue's additions to the plan, kept apart until it is accepted."""

    def __init__(self, plan: Plan) -> None:
        self.next_id = plan.next_id
        self.rows: list[Row] = []
        self.dedup: dict[tuple[str, str], tuple[int, float]] = {}
        self.heads: set[tuple[str, str]] = set()
        self.added: dict[str, int] = {}

    def accept_into(self, plan: Plan) -> None:
        plan.next_id = self.next_id
        plan.rows += self.rows
        plan.dedup.update(self.dedup)
        plan.heads |= self.heads
        for queue, count in self.added.items():
            plan.added[queue] = plan.added.get(queue, 0) + count


def _decide(op: EnqueueOp, reads: Reads, plan: Plan) -> Replies:
    """One enqueue, all or nothing: its results, with its rows added to the
    plan only if every batch fits. Raises before changing the plan."""
    mine = Tentative(plan)
    out = [_decide_batch(op, queue, messages, reads, plan, mine) for queue, messages in op.batches]
    mine.accept_into(plan)
    if op.idempotency_key is not None:
        plan.replies[op.idempotency_key] = (out, op.idempotency_until)
    return out


def _decide_batch(
    op: EnqueueOp,
    queue: str,
    messages: list[PreparedMessage],
    reads: Reads,
    plan: Plan,
    mine: Tentative,
) -> list[EnqueueResult]:
    config = reads.configs.get(queue)
    if config is None:
        raise QueueNotFound(f"no queue named {queue!r}")
    results: list[EnqueueResult] = []
    count = 0
    for m in messages:
        key = (queue, m.dedup_key) if m.dedup_key is not None else None
        if key is not None and config.dedup_window > 0:
            first = mine.dedup.get(key) or plan.dedup.get(key)
            seq = first[0] if first is not None else reads.dedup.get(key)
            if seq is not None:
                results.append(EnqueueResult(format_id(seq), True))
                continue
            mine.dedup[key] = (mine.next_id, op.now + config.dedup_window)
        seq, mine.next_id = mine.next_id, mine.next_id + 1
        group = (queue, m.group) if m.group is not None else None
        behind = group is not None and (
            group in mine.heads or group in plan.heads or group in reads.heads
        )
        state = initial_state(m.available_at, op.now, behind)
        if group is not None and not behind:
            mine.heads.add(group)
        # The bucket by the settings read (and locked) now: another node's
        # broker may not have seen a change of the bucket count yet.
        bucket = bucket_of(m.group, config.buckets) if m.group is not None else None
        mine.rows.append(_row(seq, queue, state, m, bucket, op.now))
        results.append(EnqueueResult(format_id(seq)))
        count += 1
    if count and config.max_length is not None:
        depth = reads.depths.get(queue, 0) + plan.added.get(queue, 0) + mine.added.get(queue, 0)
        check_room(queue, config.max_length, depth, count)
    if count:
        mine.added[queue] = mine.added.get(queue, 0) + count
    return results


def _row(
    seq: int, queue: str, state: int, m: PreparedMessage, bucket: int | None, now: float
) -> Row:
    headers = encode_headers(m.headers) if m.headers else None
    return (seq, queue, state, m.priority, m.available_at, m.expires_at, m.body, headers,
            m.dedup_key, m.group, bucket, m.max_attempts, now)  # fmt: skip


async def _write(conn: Connection, plan: Plan, now: float, fx: CountDeltas) -> None:
    if plan.replies:
        keys = list(plan.replies)
        stored = await conn.fetch(
            Q.idempotency_put,
            keys,
            [msgspec.msgpack.encode(plan.replies[k][0]) for k in keys],
            [plan.replies[k][1] for k in keys],
            now,
        )
        if len(stored) < len(keys):
            raise RetryTransaction("an idempotency key was stored by another node meanwhile")
    if plan.dedup:
        keys2 = list(plan.dedup)
        claimed = await conn.fetch(
            Q.dedup_claim,
            [q for q, _ in keys2],
            [k for _, k in keys2],
            [plan.dedup[k][0] for k in keys2],
            [plan.dedup[k][1] for k in keys2],
            now,
        )
        if len(claimed) < len(keys2):
            raise RetryTransaction("a dedup key was stored by another node meanwhile")
    if not plan.rows:
        return
    await _insert_rows(conn, plan.rows)
    for queue, count in plan.added.items():
        fx.depth(queue, count)
        fx.add(queue, "enqueued", count)
        fx.notify.add(queue)


async def _insert_rows(conn: Connection, rows: list[Row]) -> None:
    """Insert the round's messages. A would-be head that another transaction
    beat to it (unique index) queues behind the head that won, holding it FOR
    SHARE as the read holds the heads it saw: without the lock, that head
    could be delivered and finish (promoting nobody) before this member is
    committed, which would then wait behind no head, and the next member
    enqueued would lead in its place. A head that finished between the two
    statements leaves its group without one: the member tries to lead again."""
    pending = rows
    for _ in range(HEAD_RACES):
        inserted, won = await _insert(conn, pending)
        if inserted == len(pending):
            return
        heads = set(won)
        lost = [r for r in pending if r[9] is not None and r[2] != BLOCKED and r[0] not in heads]
        groups = sorted({(r[1], r[9]) for r in lost})
        found = await conn.fetch(Q.heads_share, [q for q, _ in groups], [g for _, g in groups])
        held = {(q, g) for q, g in found}
        pending = [(*r[:2], BLOCKED, *r[3:]) if (r[1], r[9]) in held else r for r in lost]
    raise RetryTransaction("group heads were made and finished meanwhile, again and again")


async def _insert(conn: Connection, rows: list[Row]) -> tuple[int, list[int]]:
    """Rows inserted, and the group heads among them."""
    columns = [list(c) for c in zip(*rows, strict=True)]
    row = await conn.fetchrow(Q.messages_insert, *columns)
    assert row is not None
    return int(row[0]), list(row[1])
