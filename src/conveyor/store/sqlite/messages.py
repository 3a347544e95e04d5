"""The message transitions of the SQLite store, each run inside one
transaction of the group-commit writer.

Every function takes the store's in-memory state (its caches, touched only on
the event loop the writer runs on) and a Transaction, and is
atomic: the writer wraps it in a savepoint, so a ConveyorError raised half
way leaves nothing behind. Table layout and invariants: migrations/0001.

What becomes of a message in each transition is decided in
core/transitions.py; rows become the broker's values in store/mapping.py.
This module runs the SQL that reads and persists them, a message at a time.

Leaks (what differs on PostgreSQL): here one writer serialises every
transition, so a claim needs no row locks and the bucket-owner check cannot
race; PostgreSQL takes row locks (SKIP LOCKED) for the same guarantees.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import msgspec

from conveyor.core.errors import SessionNotFound
from conveyor.core.ids import format_id, parse_id
from conveyor.core.transitions import (
    BLOCKED,
    DEAD,
    LEASED,
    READY,
    SCHEDULED,
    DeadLetter,
    LeaseEnd,
    Retry,
    Unclaim,
    after_dead,
    after_expiry,
    after_lease_end,
    after_nack,
    check_room,
    initial_state,
    is_group_head,
    lease_lost,
)
from conveyor.core.types import (
    Ack,
    Dead,
    EnqueueResult,
    Extend,
    MessageState,
    Nack,
    PreparedMessage,
    ResultStatus,
)
from conveyor.store.base import (
    MESSAGE_OVERHEAD,
    SWEEP_LIMIT,
    ClaimOp,
    ClaimResult,
    EnqueueOp,
    Settled,
    SettleOp,
    Swept,
)
from conveyor.store.effects import Effects
from conveyor.store.mapping import deliveries, encode_headers
from conveyor.store.sqlite.queries import Q

if TYPE_CHECKING:
    from conveyor.store.sqlite.store import StoreState
    from conveyor.store.sqlite.writer import Transaction


class StateCounts(Effects):
    """Effects whose counters begin with the queue's count of messages in
    each state (indexed by state code), kept exact in its row: every change
    of a message's state goes through ``move``, so a queue's statistics
    never count rows."""

    __slots__ = ()
    LEADING = len(MessageState)

    def move(self, queue: str, before: int | None, after: int | None, n: int = 1) -> None:
        """``n`` messages of the queue went from state ``before`` to state
        ``after`` (None: not stored, i.e. enqueued or deleted)."""
        if n == 0 or before == after:
            return
        row = self.counters(queue)
        if before is not None:
            row[before] -= n
        if after is not None:
            row[after] += n

    def flush(self, tx: Transaction) -> None:
        """Add the counters to the queues' rows, and start afresh."""
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
    fx = StateCounts()
    out = [_enqueue_into(state, tx, fx, queue, messages, op.now) for queue, messages in op.batches]
    fx.flush(tx)
    if op.idempotency_key is not None:
        reply = msgspec.msgpack.encode(out)
        conn.execute(Q.idempotency_put, (op.idempotency_key, reply, op.idempotency_until))
    return out


def _enqueue_into(
    state: StoreState,
    tx: Transaction,
    fx: StateCounts,
    queue: str,
    messages: list[PreparedMessage],
    now: float,
) -> list[EnqueueResult]:
    conn = tx.conn
    config = state.config(queue)
    dedup = config.dedup_window > 0
    results: list[EnqueueResult] = []
    rows: list[tuple[Any, ...]] = []
    counts = [0] * StateCounts.LEADING  # new messages by state
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
        grp = m.group
        behind = grp is not None and (
            grp in heads or conn.execute(Q.group_has_head, (queue, grp)).fetchone() is not None
        )
        st = initial_state(m.available_at, now, behind)
        if grp is not None and not behind:
            heads.add(grp)
        counts[st] += 1
        headers = encode_headers(m.headers) if m.headers else None
        rows.append(
            (seq, queue, st, m.priority, m.available_at, m.expires_at, m.body, headers,
             m.dedup_key, grp, m.bucket, m.max_attempts, now)
        )  # fmt: skip
        results.append(EnqueueResult(format_id(seq)))
    if rows:
        if config.max_length is not None:
            depth = conn.execute(Q.queue_depth, (queue,)).fetchone()[0]
            check_room(queue, config.max_length, depth, len(rows))
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
    fx = StateCounts()
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
    leased, size, owned = deliveries(op.queue, rows, deadline, op.visibility, config)
    if owned:
        conn.executemany(Q.own_bucket, [(op.queue, b, op.session) for b in owned])
    if leased:
        fx.move(op.queue, READY, LEASED, len(leased))
        fx.add(op.queue, "delivered", len(leased))
        conn.execute(Q.session_delivered, (len(leased), now, op.session))
    fx.flush(tx)
    next_at = None
    if len(leased) < op.limit:
        next_at = conn.execute(Q.next_scheduled, (op.queue,)).fetchone()[0]
    return ClaimResult(leased, next_at, size)


# -- settling leases ---------------------------------------------------------


def ack(state: StoreState, tx: Transaction, op: SettleOp) -> Settled:
    conn = tx.conn
    fx = StateCounts()
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
            outcomes.append(lease_lost(item.id, item.token))
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
    fx = StateCounts()
    outcomes: list[Any] = []
    for item in op.items:
        assert isinstance(item, Nack)
        seq = parse_id(item.id)
        row = conn.execute(Q.lease_get, (seq, item.token)).fetchone()
        if row is None:
            outcomes.append(lease_lost(item.id, item.token))
            continue
        queue, grp, attempts, max_attempts, before = row
        config = state.config(queue)
        outcome = after_nack(
            attempts, max_attempts, config, item.delay, item.error, op.now, item.undelivered
        )
        if isinstance(outcome, Unclaim):
            conn.execute(Q.unclaim, (op.now, seq))
            fx.move(queue, before, READY)
            fx.woken.add(queue)
            outcomes.append(None)
            continue
        fx.add(queue, "nacked")
        if isinstance(outcome, Retry):
            conn.execute(Q.retry, (outcome.state, outcome.available_at, outcome.error, seq))
            fx.move(queue, before, outcome.state)
            fx.woken.add(queue)  # ready now, or its consumers' next delayed message may be sooner
        else:
            _kill(state, tx, fx, seq, queue, before, grp, outcome, op.now)
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
            outcomes.append(lease_lost(item.id, item.token))
    return Settled(outcomes, [])


def dead(state: StoreState, tx: Transaction, op: SettleOp) -> Settled:
    fx = StateCounts()
    outcomes: list[Any] = []
    for item in op.items:
        assert isinstance(item, Dead)
        seq = parse_id(item.id)
        row = tx.conn.execute(Q.lease_get, (seq, item.token)).fetchone()
        if row is None:
            outcomes.append(lease_lost(item.id, item.token))
            continue
        queue, grp, _, _, before = row
        _kill(state, tx, fx, seq, queue, before, grp, after_dead(item.reason), op.now)
        outcomes.append(None)
    fx.flush(tx)
    return Settled(outcomes, sorted(fx.woken))


def _promote_group(tx: Transaction, fx: StateCounts, queue: str, grp: str, now: float) -> None:
    """The head of a group finished: its next message (in enqueue order) leads.
    The queue is woken even if none did: a bucket whose last lease this was
    may now go to its new owner."""
    for (st,) in tx.conn.execute(Q.promote_group, (now, queue, grp)):
        fx.move(queue, BLOCKED, st)
    fx.woken.add(queue)


def _kill(
    state: StoreState,
    tx: Transaction,
    fx: StateCounts,
    seq: int,
    queue: str,
    before: int,
    grp: str | None,
    letter: DeadLetter,
    now: float,
) -> None:
    """Move one message (in state ``before``, of group ``grp``) to its
    queue's dead letters, record why, and move its group on if it led it."""
    conn = tx.conn
    conn.execute(Q.kill, (letter.reason, letter.error, now, seq))
    fx.add(queue, "dead")
    fx.move(queue, before, DEAD)
    ttl = state.config(queue).result_ttl
    conn.execute(Q.result_put, (seq, ResultStatus.DEAD.value, None, letter.detail, now, now + ttl))
    fx.finished.append(format_id(seq))
    if grp is not None and letter.was_head:
        _promote_group(tx, fx, queue, grp, now)


# -- sessions and the monitor -------------------------------------------------


def release(
    state: StoreState,
    tx: Transaction,
    fx: StateCounts,
    rows: list[tuple[int, str, str | None, int, int | None]],
    now: float,
    why: LeaseEnd,
) -> None:
    """End leases that no consumer settled (core/transitions.py's
    after_lease_end decides what becomes of each message)."""
    for seq, queue, grp, attempts, max_attempts in rows:
        fx.add(queue, "lease_expired")
        outcome = after_lease_end(attempts, max_attempts, state.config(queue), why)
        if isinstance(outcome, DeadLetter):
            _kill(state, tx, fx, seq, queue, LEASED, grp, outcome, now)
        else:
            tx.conn.execute(Q.release, (seq,))
            fx.move(queue, LEASED, READY)
            fx.woken.add(queue)


def close_session(
    state: StoreState, tx: Transaction, fx: StateCounts, session: str, now: float
) -> None:
    """End a session: release its leases, forget its queues and buckets."""
    conn = tx.conn
    rows = conn.execute(Q.leases_of_session, (session,)).fetchall()
    release(state, tx, fx, rows, now, LeaseEnd.SESSION_ENDED)
    fx.woken.update(q for (q,) in conn.execute(Q.consumer_queues, (session,)).fetchall())
    conn.execute(Q.consumers_drop_session, (session,))
    conn.execute(Q.owners_drop_session, (session,))
    conn.execute(Q.session_delete, (session,))


def sweep(state: StoreState, tx: Transaction, now: float) -> Swept:
    conn = tx.conn
    fx = StateCounts()
    expired_sessions = [s for (s,) in conn.execute(Q.sessions_expired, (now,)).fetchall()]
    for session in expired_sessions:
        close_session(state, tx, fx, session, now)
    rows = conn.execute(Q.leases_expired, (now, SWEEP_LIMIT)).fetchall()
    release(state, tx, fx, rows, now, LeaseEnd.LEASE_EXPIRED)
    for queue in state.configs:
        due = conn.execute(Q.promote_due, (queue, now)).rowcount
        if due:
            fx.move(queue, SCHEDULED, READY, due)
            fx.woken.add(queue)
    expired = conn.execute(Q.ttl_expired, (now, SWEEP_LIMIT)).fetchall()
    # Blocked members first: a head that dies promotes the next member, and
    # one of these promoted meanwhile would be killed as still blocked (its
    # own successor never promoted, its counts wrong).
    for seq, queue, grp, st in sorted(expired, key=lambda row: is_group_head(row[3])):
        fx.add(queue, "expired")
        _kill(state, tx, fx, seq, queue, st, grp, after_expiry(st), now)
    conn.execute(Q.dedup_sweep, (now,))
    conn.execute(Q.results_sweep, (now,))
    conn.execute(Q.idempotency_sweep, (now,))
    fx.flush(tx)
    return Swept(expired_sessions, len(rows), len(expired), sorted(fx.woken), fx.finished)
