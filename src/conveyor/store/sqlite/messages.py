"""The message transitions of the SQLite store, each run inside one
transaction of the group-commit writer.

Every function takes the store's in-memory state (its caches, touched only on
the event loop the writer runs on) and a Transaction, and is
atomic: the writer wraps it in a savepoint, so a ConveyorError raised half
way leaves nothing behind. Table layout and invariants: migrations/0001.

Leaks (what differs on PostgreSQL): here one writer serialises every
transition, so a claim needs no row locks and the bucket-owner check cannot
race; PostgreSQL takes row locks (SKIP LOCKED) for the same guarantees.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import msgspec

from conveyor.core.errors import LeaseLost, QueueFull, SessionNotFound
from conveyor.core.ids import format_id, parse_id
from conveyor.core.retry import RetryPolicy
from conveyor.core.types import (
    Ack,
    Dead,
    Delivery,
    EnqueueResult,
    Extend,
    Nack,
    PreparedMessage,
    ResultStatus,
)
from conveyor.store.base import (
    MESSAGE_OVERHEAD,
    ClaimOp,
    ClaimResult,
    EnqueueOp,
    Settled,
    SettleOp,
    Swept,
    delivery_size,
)
from conveyor.store.sqlite.queries import Q

if TYPE_CHECKING:
    from conveyor.store.sqlite.store import StoreState
    from conveyor.store.sqlite.writer import Transaction

READY, SCHEDULED, LEASED, DEAD, BLOCKED = 0, 1, 2, 3, 4
_encode_headers = msgspec.json.Encoder().encode
_decode_headers = msgspec.json.Decoder(dict[str, str]).decode
SWEEP_LIMIT = 5000  # rows per kind per sweep: keeps each monitor transaction short


class Effects:
    """What one operation changed besides rows: per-queue counters (written
    once at its end), queues whose consumers should look again, and message
    ids that got a result.

    A queue's counters are how many of its messages are in each state
    (indexed by state) and its running totals; every change of a message's
    state goes through ``move``, so the counts stay exact and a queue's
    statistics never count rows."""

    __slots__ = ("by_queue", "finished", "woken")
    TOTALS = ("enqueued", "delivered", "acked", "nacked", "dead", "expired", "lease_expired")
    STATES = 5

    def __init__(self) -> None:
        self.by_queue: dict[str, list[int]] = {}
        self.woken: set[str] = set()
        self.finished: list[str] = []

    def _row(self, queue: str) -> list[int]:
        row = self.by_queue.get(queue)
        if row is None:
            row = self.by_queue[queue] = [0] * (self.STATES + len(self.TOTALS))
        return row

    def add(self, queue: str, total: str, n: int = 1) -> None:
        self._row(queue)[self.STATES + self.TOTALS.index(total)] += n

    def move(self, queue: str, before: int | None, after: int | None, n: int = 1) -> None:
        """``n`` messages of the queue went from state ``before`` to state
        ``after`` (None: not stored, i.e. enqueued or deleted)."""
        if n == 0 or before == after:
            return
        row = self._row(queue)
        if before is not None:
            row[before] -= n
        if after is not None:
            row[after] += n

    def flush(self, tx: Transaction) -> None:
        if self.by_queue:
            tx.conn.executemany(Q.bump_counters, [(*row, q) for q, row in self.by_queue.items()])
            self.by_queue.clear()


# -- enqueue ---------------------------------------------------------------


_replies = msgspec.msgpack.Decoder(list[list[EnqueueResult]])


def enqueue(state: StoreState, tx: Transaction, op: EnqueueOp) -> list[list[EnqueueResult]]:
    conn = tx.conn
    if op.idempotency_key is not None:
        found = conn.execute(Q.idempotency_get, (op.idempotency_key, op.now)).fetchone()
        if found is not None:
            return _replies.decode(found[0])
    fx = Effects()
    out = [_enqueue_into(state, tx, fx, queue, messages, op.now) for queue, messages in op.batches]
    fx.flush(tx)
    if op.idempotency_key is not None:
        reply = msgspec.msgpack.encode(out)
        conn.execute(Q.idempotency_put, (op.idempotency_key, reply, op.idempotency_until))
    return out


def _enqueue_into(
    state: StoreState,
    tx: Transaction,
    fx: Effects,
    queue: str,
    messages: list[PreparedMessage],
    now: float,
) -> list[EnqueueResult]:
    conn = tx.conn
    config = state.config(queue)
    dedup = config.dedup_window > 0
    results: list[EnqueueResult] = []
    rows: list[tuple[Any, ...]] = []
    counts = [0] * Effects.STATES  # new messages by state
    heads: set[str] = set()  # groups given a head in this batch
    for m in messages:
        if dedup and m.dedup_key is not None:
            found = conn.execute(Q.dedup_get, (queue, m.dedup_key, now)).fetchone()
            if found is not None:
                results.append(EnqueueResult(format_id(found[0]), True))
                continue
            seq = state.ids.next(now)
            conn.execute(Q.dedup_put, (queue, m.dedup_key, seq, now + config.dedup_window))
        else:
            seq = state.ids.next(now)
        if m.group is None:
            st = SCHEDULED if m.available_at > now else READY
        elif m.group in heads or conn.execute(Q.group_has_head, (queue, m.group)).fetchone():
            st = BLOCKED
        else:
            st = SCHEDULED if m.available_at > now else READY
            heads.add(m.group)
        counts[st] += 1
        headers = _encode_headers(m.headers) if m.headers else None
        rows.append(
            (seq, queue, st, m.priority, m.available_at, m.expires_at, m.body, headers,
             m.dedup_key, m.group, m.bucket, m.max_attempts, now)
        )  # fmt: skip
        results.append(EnqueueResult(format_id(seq)))
    if rows:
        if config.max_length is not None:
            depth = conn.execute(Q.queue_depth, (queue,)).fetchone()[0]
            if depth + len(rows) > config.max_length:
                raise QueueFull(
                    f"queue {queue!r} holds {depth} of at most {config.max_length} messages;"
                    f" {len(rows)} more do not fit"
                )
        conn.executemany(Q.insert_message, rows)
        for st, n in enumerate(counts):
            fx.move(queue, None, st, n)
        fx.add(queue, "enqueued", len(rows))
    return results


# -- claim -----------------------------------------------------------------


def claim(state: StoreState, tx: Transaction, op: ClaimOp) -> ClaimResult:
    conn = tx.conn
    config = state.config(op.queue)
    if conn.execute(Q.session_exists, (op.session,)).fetchone() is None:
        raise SessionNotFound(f"session {op.session!r} is closed or expired")
    now = op.now
    fx = Effects()
    conn.execute(Q.consumer_claimed, (now, op.queue, op.session))
    fx.move(op.queue, SCHEDULED, READY, conn.execute(Q.promote_due, (op.queue, now)).rowcount)
    buckets: str | None = None
    if op.buckets and conn.execute(Q.has_ready_grouped, (op.queue,)).fetchone():
        allowed = conn.execute(
            Q.claimable_buckets, (json.dumps(op.buckets), op.queue, op.session, op.queue)
        ).fetchall()
        if allowed:
            buckets = json.dumps([b for (b,) in allowed])
    deadline = now + op.visibility
    args = (op.session, state.token_floor, deadline, op.queue, now, op.limit)
    sized = (MESSAGE_OVERHEAD, op.max_bytes)
    if buckets is None:
        rows = conn.execute(Q.claim_plain, (*args, *sized)).fetchall()
    else:
        rows = conn.execute(Q.claim_grouped, (*args, *sized, buckets)).fetchall()
    # RETURNING gives rows in no particular order: restore delivery order.
    rows.sort(key=lambda r: (-r[3], r[9], r[0]))
    deliveries = []
    size = 0
    owned: set[int] = set()
    for (
        seq,
        body,
        headers,
        priority,
        grp,
        attempts,
        max_attempts,
        token,
        enqueued_at,
        _,
        bucket,
    ) in rows:
        deliveries.append(
            Delivery(
                id=format_id(seq),
                queue=op.queue,
                body=body,
                headers=_decode_headers(headers) if headers is not None else {},
                priority=priority,
                group=grp,
                attempts=attempts,
                max_attempts=max_attempts or config.max_attempts,
                token=token,
                deadline=deadline,
                lease=op.visibility,
                enqueued_at=enqueued_at,
            )
        )
        size += delivery_size(len(body), len(headers) if headers is not None else 0)
        if grp is not None:
            owned.add(bucket)
    if owned:
        conn.executemany(Q.own_bucket, [(op.queue, b, op.session) for b in owned])
    if deliveries:
        fx.move(op.queue, READY, LEASED, len(deliveries))
        fx.add(op.queue, "delivered", len(deliveries))
        conn.execute(Q.session_delivered, (len(deliveries), now, op.session))
    fx.flush(tx)
    next_at = None
    if len(deliveries) < op.limit:
        next_at = conn.execute(Q.next_scheduled, (op.queue,)).fetchone()[0]
    return ClaimResult(deliveries, next_at, size)


# -- settling leases ---------------------------------------------------------


def ack(state: StoreState, tx: Transaction, op: SettleOp) -> Settled:
    conn = tx.conn
    fx = Effects()
    outcomes: list[Any] = []
    acked_by: dict[str, int] = {}
    acks = [item for item in op.items if isinstance(item, Ack)]
    assert len(acks) == len(op.items)
    seqs = [parse_id(item.id) for item in acks]
    pairs = json.dumps([[seq, item.token] for seq, item in zip(seqs, acks, strict=True)])
    deleted = {(row[0], row[1]): row[2:] for row in conn.execute(Q.ack_delete, (pairs,))}
    for seq, item in zip(seqs, acks, strict=True):
        row = deleted.pop((seq, item.token), None)  # an id listed twice is acked once
        if row is None:
            outcomes.append(_lost(item.id, item.token))
            continue
        queue, grp, holder, st = row
        fx.add(queue, "acked")
        fx.move(queue, st, None)
        acked_by[holder] = acked_by.get(holder, 0) + 1
        if grp is not None:
            _promote_group(tx, fx, queue, grp, op.now)
        if item.result is not None:
            ttl = state.config(queue).result_ttl
            conn.execute(
                Q.result_put, (seq, ResultStatus.OK.value, item.result, None, op.now, op.now + ttl)
            )
        outcomes.append(None)
    if acked_by:
        conn.executemany(Q.session_acked, [(n, s) for s, n in acked_by.items()])
    fx.flush(tx)
    return Settled(outcomes, sorted(fx.woken))


def nack(state: StoreState, tx: Transaction, op: SettleOp) -> Settled:
    conn = tx.conn
    fx = Effects()
    outcomes: list[Any] = []
    for item in op.items:
        assert isinstance(item, Nack)
        seq = parse_id(item.id)
        row = conn.execute(Q.lease_get, (seq, item.token)).fetchone()
        if row is None:
            outcomes.append(_lost(item.id, item.token))
            continue
        queue, grp, attempts, max_attempts, before = row
        config = state.config(queue)
        fx.add(queue, "nacked")
        if attempts >= (max_attempts or config.max_attempts):
            reason = f"failed on all {attempts} attempts"
            _kill(state, tx, fx, seq, queue, before, grp, reason, item.error, op.now)
        else:
            policy = RetryPolicy(config.retry_base, config.retry_max, config.retry_jitter)
            delay = item.delay if item.delay is not None else policy.backoff(attempts)
            st = SCHEDULED if delay > 0 else READY
            conn.execute(Q.retry, (st, op.now + delay, item.error, seq))
            fx.move(queue, before, st)
            fx.woken.add(queue)  # ready now, or its consumers' next delayed message may be sooner
        outcomes.append(None)
    fx.flush(tx)
    return Settled(outcomes, sorted(fx.woken))


def extend(state: StoreState, tx: Transaction, op: SettleOp) -> Settled:
    outcomes: list[Any] = []
    for item in op.items:
        assert isinstance(item, Extend)
        deadline = op.now + item.seconds
        if tx.conn.execute(Q.extend, (deadline, parse_id(item.id), item.token, op.now)).rowcount:
            outcomes.append(deadline)
        else:
            outcomes.append(_lost(item.id, item.token))
    return Settled(outcomes, [])


def dead(state: StoreState, tx: Transaction, op: SettleOp) -> Settled:
    fx = Effects()
    outcomes: list[Any] = []
    for item in op.items:
        assert isinstance(item, Dead)
        seq = parse_id(item.id)
        row = tx.conn.execute(Q.lease_get, (seq, item.token)).fetchone()
        if row is None:
            outcomes.append(_lost(item.id, item.token))
            continue
        queue, grp, _, _, before = row
        _kill(state, tx, fx, seq, queue, before, grp, item.reason, None, op.now)
        outcomes.append(None)
    fx.flush(tx)
    return Settled(outcomes, sorted(fx.woken))


def _lost(message_id: str, token: int) -> LeaseLost:
    return LeaseLost(
        f"message {message_id} is not leased with token {token}: it was acked, nacked,"
        " delivered again, dead-lettered, or never had that token"
    )


def _promote_group(tx: Transaction, fx: Effects, queue: str, grp: str, now: float) -> None:
    """The head of a group finished: its next message (in enqueue order) leads.
    The queue is woken even if none did: a bucket whose last lease this was
    may now go to its new owner."""
    for (st,) in tx.conn.execute(Q.promote_group, (now, queue, grp)):
        fx.move(queue, BLOCKED, st)
    fx.woken.add(queue)


def _kill(
    state: StoreState,
    tx: Transaction,
    fx: Effects,
    seq: int,
    queue: str,
    before: int,
    grp: str | None,
    reason: str,
    error: str | None,
    now: float,
) -> None:
    """Move one message (in state ``before``) to its queue's dead letters and
    record why. ``grp``: the group of a message that was its group's head
    (the next one leads now), else None."""
    conn = tx.conn
    conn.execute(Q.kill, (reason, error, now, seq))
    fx.add(queue, "dead")
    fx.move(queue, before, DEAD)
    ttl = state.config(queue).result_ttl
    detail = reason if error is None else f"{reason}: {error}"
    conn.execute(Q.result_put, (seq, ResultStatus.DEAD.value, None, detail, now, now + ttl))
    fx.finished.append(format_id(seq))
    if grp is not None:
        _promote_group(tx, fx, queue, grp, now)


# -- sessions and the monitor -------------------------------------------------


def release(
    state: StoreState,
    tx: Transaction,
    fx: Effects,
    rows: list[tuple[int, str, str | None, int, int | None]],
    now: float,
    why: str,
) -> None:
    """Make leased messages ready again, keeping their token (a late ack with
    it still succeeds until someone else gets the message); a message that has
    used up its attempts is dead-lettered instead."""
    for seq, queue, grp, attempts, max_attempts in rows:
        fx.add(queue, "lease_expired")
        if attempts >= (max_attempts or state.config(queue).max_attempts):
            reason = f"{why} after {attempts} attempts"
            _kill(state, tx, fx, seq, queue, LEASED, grp, reason, None, now)
        else:
            tx.conn.execute(Q.release, (seq,))
            fx.move(queue, LEASED, READY)
            fx.woken.add(queue)


def close_session(
    state: StoreState, tx: Transaction, fx: Effects, session: str, now: float
) -> None:
    """End a session: release its leases, forget its queues and buckets."""
    conn = tx.conn
    rows = conn.execute(Q.leases_of_session, (session,)).fetchall()
    release(state, tx, fx, rows, now, "session ended")
    fx.woken.update(q for (q,) in conn.execute(Q.consumer_queues, (session,)).fetchall())
    conn.execute(Q.consumers_drop_session, (session,))
    conn.execute(Q.owners_drop_session, (session,))
    conn.execute(Q.session_delete, (session,))


def sweep(state: StoreState, tx: Transaction, now: float) -> Swept:
    conn = tx.conn
    fx = Effects()
    expired_sessions = [s for (s,) in conn.execute(Q.sessions_expired, (now,)).fetchall()]
    for session in expired_sessions:
        close_session(state, tx, fx, session, now)
    rows = conn.execute(Q.leases_expired, (now, SWEEP_LIMIT)).fetchall()
    release(state, tx, fx, rows, now, "lease expired")
    for queue in state.configs:
        due = conn.execute(Q.promote_due, (queue, now)).rowcount
        if due:
            fx.move(queue, SCHEDULED, READY, due)
            fx.woken.add(queue)
    expired = conn.execute(Q.ttl_expired, (now, SWEEP_LIMIT)).fetchall()
    # Blocked members first: a head that dies promotes the next member, and
    # one of these promoted meanwhile would be killed as still blocked (its
    # own successor never promoted, its counts wrong).
    for seq, queue, grp, st in sorted(expired, key=lambda row: row[3] != BLOCKED):
        fx.add(queue, "expired")
        # A blocked message is not its group's head: the head still leads,
        # so nothing behind it may be promoted.
        head = grp if st != BLOCKED else None
        _kill(state, tx, fx, seq, queue, st, head, "expired", None, now)
    conn.execute(Q.dedup_sweep, (now,))
    conn.execute(Q.results_sweep, (now,))
    conn.execute(Q.idempotency_sweep, (now,))
    fx.flush(tx)
    return Swept(expired_sessions, len(rows), len(expired), sorted(fx.woken), fx.finished)
