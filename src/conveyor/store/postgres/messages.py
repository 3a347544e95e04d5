"""The message transitions of the PostgreSQL store.

Claims run each in a transaction of their own on a pooled connection; acks,
nacks, extensions and dead-letterings arrive as the jobs of one group-commit
round (writer.py) and are settled together, one set-based statement per step
for the whole round. What becomes of each message is decided in
core/transitions.py, a message at a time; rows become the broker's values
in store/mapping.py. Table layout and invariants: migrations/0001.

Leaks (what differs from SQLite, where one writer on the event loop runs
every transition, one after the other): here transactions of several nodes
run at once, so
  - a claim takes ready rows FOR UPDATE SKIP LOCKED: rows another claim is
    taking are skipped, never waited for, never given twice;
  - a claim holds its session's row (FOR KEY SHARE: claims and heartbeats
    of one session do not wait on each other) until it commits, so a close or an
    expiry of the session (which deletes the row first) sees its leases;
  - the bucket-owner check locks the bucket rows it passes (SKIP LOCKED), so
    two sessions never take from one bucket at once;
  - group heads are unique by index, and an enqueue (or a redrive) locks the
    head it queues behind FOR SHARE (the one it read, or the one that beat it
    to the head), so a head cannot finish (and its group be promoted)
    without seeing the members committed behind it;
  - the lease monitor of every node sweeps, each taking rows with SKIP
    LOCKED: two monitors never release the same lease or end one session twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.core.errors import QueueNotFound, SessionNotFound
from conveyor.core.ids import format_id, parse_id
from conveyor.core.transitions import (
    DeadLetter,
    LeaseEnd,
    Retry,
    Unclaim,
    after_dead,
    after_expiry,
    after_lease_end,
    after_nack,
    lease_lost,
)
from conveyor.core.types import Ack, Dead, Extend, Nack, QueueConfig, ResultStatus
from conveyor.store.base import MESSAGE_OVERHEAD, SWEEP_LIMIT, ClaimOp, ClaimResult, Settled, Swept
from conveyor.store.mapping import deliveries
from conveyor.store.postgres.node import CountDeltas, NodeState
from conveyor.store.postgres.queries import Q

if TYPE_CHECKING:
    from conveyor.store.postgres.driver import Connection
    from conveyor.store.postgres.writer import Job

PROMOTE_LIMIT = 5000  # due messages a claim makes ready; the monitor does the rest
FOLD_ABOVE = 32  # delta rows of one queue (or session) before the monitor folds them
HEAD_RACES = 8  # looks for a group's head, each lost to another transaction's, before a rerun
_DEFAULTS = QueueConfig(name="-")  # the settings of a queue deleted meanwhile

# A message to dead-letter: seq, queue, group, why, and the time.
Kill = tuple[int, str, str | None, DeadLetter, float]


# -- claim -----------------------------------------------------------------


async def claim(conn: Connection, node: NodeState, op: ClaimOp) -> ClaimResult:
    """Two round trips when no group bucket is involved: claim_begin, then
    the claim itself, each a transaction of its own (see queries.sql)."""
    row = await conn.fetchrow(Q.claim_begin, op.queue, op.session, op.now, PROMOTE_LIMIT)
    assert row is not None
    config_text, has_session, grouped_ready, promoted, next_after, _ = row
    if config_text is None:
        raise QueueNotFound(f"no queue named {op.queue!r}")
    if not has_session:
        raise SessionNotFound(f"session {op.session!r} is closed or expired")
    config = node.settings(op.queue, config_text)
    deadline = op.now + op.visibility
    args = (
        op.queue, op.now, op.limit, op.session, node.token_floor, deadline,
        op.max_bytes, MESSAGE_OVERHEAD,
    )  # fmt: skip
    if op.buckets and grouped_ready:
        rows = await _claim_grouped(conn, op, args)
    else:
        rows = await conn.fetch(Q.claim_plain, *args)
    rows = [r for r in rows if r[0] is not None]  # leased nothing: one row of NULLs
    # The buckets taken from are owned already: claim_grouped made it so.
    leased, size, _ = deliveries(op.queue, rows, deadline, op.visibility, config)
    next_at = None
    if len(leased) < op.limit:
        # More were due than one claim promotes: the rest are due now.
        next_at = op.now if promoted >= PROMOTE_LIMIT else next_after
    return ClaimResult(leased, next_at, size)


async def _claim_grouped(conn: Connection, op: ClaimOp, args: tuple[Any, ...]) -> list[Any]:
    """Group heads come only from the session's buckets that no other session
    holds a lease in; the bucket rows stay locked until the claim commits, so
    no two sessions take from one bucket at once."""
    async with conn.transaction():
        locked = [b for (b,) in await conn.fetch(Q.buckets_lock, op.queue, op.buckets)]
        free: list[int] = []
        if locked:
            # A fresh statement: it sees every lease committed before the locks.
            free = [b for (b,) in await conn.fetch(Q.buckets_free, op.queue, locked, op.session)]
        if not free:
            return await conn.fetch(Q.claim_plain, *args)
        return await conn.fetch(Q.claim_grouped, *args, free)


# -- settling leases, a round at a time ----------------------------------------


def _items(jobs: list[Job]) -> list[tuple[Job, int, Any, float]]:
    """Every item of every job: (job, index in the job, item, the job's now)."""
    return [(job, i, item, job.op.now) for job in jobs for i, item in enumerate(job.op.items)]


def _outcomes(jobs: list[Job]) -> dict[int, list[Any]]:
    return {id(job): [None] * len(job.op.items) for job in jobs}


async def ack_round(conn: Connection, node: NodeState, jobs: list[Job], fx: CountDeltas) -> None:
    items = _items(jobs)
    rows = await conn.fetch(
        Q.ack_delete, [parse_id(i.id) for _, _, i, _ in items], [i.token for _, _, i, _ in items]
    )
    deleted = {seq: (token, queue, grp, holder) for seq, token, queue, grp, holder in rows}
    outcomes = _outcomes(jobs)
    promote: list[tuple[str, str, float]] = []
    results: list[tuple[int, Ack, str, float]] = []
    for job, index, item, now in items:
        assert isinstance(item, Ack)
        seq = parse_id(item.id)
        found = deleted.get(seq)
        if found is None or found[0] != item.token:
            outcomes[id(job)][index] = lease_lost(item.id, item.token)
            continue
        del deleted[seq]  # a second ack of the same delivery is too late
        _, queue, grp, holder = found
        fx.add(queue, "acked")
        fx.depth(queue, -1)
        fx.acked_by[holder] = fx.acked_by.get(holder, 0) + 1
        if grp is not None:
            promote.append((queue, grp, now))
        if item.result is not None:
            results.append((seq, item, queue, now))
    if results:
        configs = await node.configs(conn, {q for _, _, q, _ in results})
        await conn.execute(
            Q.results_put,
            [seq for seq, _, _, _ in results],
            [ResultStatus.OK.value] * len(results),
            [item.result for _, item, _, _ in results],
            [None] * len(results),
            [now for _, _, _, now in results],
            [now + configs.get(q, _DEFAULTS).result_ttl for _, _, q, now in results],
        )
    woken = await promote_groups(conn, promote)
    fx.woken |= woken
    # Every job of the round hears of every queue the round woke: a waiter
    # woken for nothing looks again and waits again.
    for job in jobs:
        job.succeed(Settled(outcomes[id(job)], sorted(woken)))


async def nack_round(conn: Connection, node: NodeState, jobs: list[Job], fx: CountDeltas) -> None:
    await _fail_round(conn, node, jobs, fx, dead=False)


async def dead_round(conn: Connection, node: NodeState, jobs: list[Job], fx: CountDeltas) -> None:
    await _fail_round(conn, node, jobs, fx, dead=True)


async def _fail_round(
    conn: Connection, node: NodeState, jobs: list[Job], fx: CountDeltas, *, dead: bool
) -> None:
    """Nacks (retry, or dead-letter at the last attempt) or dead-letterings."""
    items = _items(jobs)
    rows = await conn.fetch(
        Q.leases_lock, [parse_id(i.id) for _, _, i, _ in items], [i.token for _, _, i, _ in items]
    )
    leased = {seq: (token, queue, grp, att, mx) for seq, token, queue, grp, att, mx in rows}
    configs = await node.configs(conn, {r[1] for r in leased.values()})
    outcomes = _outcomes(jobs)
    retries: list[tuple[int, int, float, str | None]] = []
    unclaims: list[tuple[int, float]] = []
    kills: list[Kill] = []
    for job, index, item, now in items:
        seq = parse_id(item.id)
        found = leased.get(seq)
        if found is None or found[0] != item.token:
            outcomes[id(job)][index] = lease_lost(item.id, item.token)
            continue
        del leased[seq]  # settled once: the same token again is too late
        _, queue, grp, attempts, max_attempts = found
        if dead:
            assert isinstance(item, Dead)
            kills.append((seq, queue, grp, after_dead(scrub(item.reason) or ""), now))
            continue
        assert isinstance(item, Nack)
        config = configs.get(queue, _DEFAULTS)
        error = scrub(item.error)
        outcome = after_nack(
            attempts, max_attempts, config, item.delay, error, now, item.undelivered
        )
        if isinstance(outcome, Unclaim):
            unclaims.append((seq, now))
            fx.woken.add(queue)
            continue
        fx.add(queue, "nacked")
        if isinstance(outcome, Retry):
            retries.append((seq, outcome.state, outcome.available_at, outcome.error))
            fx.woken.add(queue)  # ready now, or its consumers' next delayed message may be sooner
        else:
            kills.append((seq, queue, grp, outcome, now))
    if retries:
        await conn.execute(Q.retry, *map(list, zip(*retries, strict=True)))
    if unclaims:
        await conn.execute(Q.unclaim, *map(list, zip(*unclaims, strict=True)))
    await kill(conn, node, fx, kills)
    for job in jobs:
        job.succeed(Settled(outcomes[id(job)], sorted(fx.woken)))


async def extend_round(conn: Connection, node: NodeState, jobs: list[Job], fx: CountDeltas) -> None:
    items = _items(jobs)
    # The first extension of a lease in the round finds it live or lapsed;
    # if live, the last one decides its deadline.
    first: dict[tuple[int, int], float] = {}
    final: dict[tuple[int, int], float] = {}
    for _, _, item, now in items:
        assert isinstance(item, Extend)
        key = (parse_id(item.id), item.token)
        first.setdefault(key, now)
        final[key] = now + item.seconds
    keys = list(final)
    rows = await conn.fetch(
        Q.extend,
        [s for s, _ in keys],
        [t for _, t in keys],
        [final[k] for k in keys],
        [first[k] for k in keys],
    )
    extended = {(seq, token) for seq, token in rows}
    outcomes = _outcomes(jobs)
    for job, index, item, now in items:
        if (parse_id(item.id), item.token) in extended:
            outcomes[id(job)][index] = now + item.seconds
        else:
            outcomes[id(job)][index] = lease_lost(item.id, item.token)
    for job in jobs:
        job.succeed(Settled(outcomes[id(job)], []))


def scrub(text: str | None) -> str | None:
    """Free text kept for people (errors, reasons, names) that PostgreSQL
    could not store as it is: NUL characters become U+FFFD."""
    if text is None or "\x00" not in text:
        return text
    return text.replace("\x00", "\ufffd")


# -- shared steps ---------------------------------------------------------------


async def promote_groups(conn: Connection, groups: list[tuple[str, str, float]]) -> set[str]:
    """The heads of these groups finished: their next members lead. Their
    queues, to be woken: a group moved on, or a bucket whose last lease this
    was may now go to its new owner."""
    pending = list({(q, g): (q, g, now) for q, g, now in groups}.values())
    while pending:
        rows = await conn.fetch(
            Q.promote_groups,
            [q for q, _, _ in pending],
            [g for _, g, _ in pending],
            [now for _, _, now in pending],
        )
        nows = {(q, g): now for q, g, now in pending}
        # A candidate that a concurrent sweep dead-lettered: look again.
        pending = [(q, g, nows[(q, g)]) for q, g, done in rows if not done]
    return {q for q, _, _ in groups}


async def kill(conn: Connection, node: NodeState, fx: CountDeltas, kills: list[Kill]) -> None:
    """Move messages to their queues' dead letters, record why, and move on
    the groups they led."""
    if not kills:
        return
    configs = await node.configs(conn, {k[1] for k in kills})
    await conn.execute(
        Q.kill,
        [k[0] for k in kills],
        [k[3].reason for k in kills],
        [k[3].error for k in kills],
        [k[4] for k in kills],
    )
    await conn.execute(
        Q.results_put,
        [k[0] for k in kills],
        [ResultStatus.DEAD.value] * len(kills),
        [None] * len(kills),
        [k[3].detail for k in kills],
        [k[4] for k in kills],
        [k[4] + configs.get(k[1], _DEFAULTS).result_ttl for k in kills],
    )
    heads: list[tuple[str, str, float]] = []
    for seq, queue, grp, letter, now in kills:
        fx.add(queue, "dead")
        fx.depth(queue, -1)
        fx.finished.append(format_id(seq))
        if grp is not None and letter.was_head:
            heads.append((queue, grp, now))
    fx.woken |= await promote_groups(conn, heads)


async def release(
    conn: Connection,
    node: NodeState,
    fx: CountDeltas,
    rows: list[Any],
    now: float,
    why: LeaseEnd,
) -> None:
    """End leases that no consumer settled (core/transitions.py's
    after_lease_end decides what becomes of each message)."""
    if not rows:
        return
    configs = await node.configs(conn, {r[1] for r in rows})
    ready: list[int] = []
    kills: list[Kill] = []
    for seq, queue, grp, attempts, max_attempts in rows:
        fx.add(queue, "lease_expired")
        outcome = after_lease_end(attempts, max_attempts, configs.get(queue, _DEFAULTS), why)
        if isinstance(outcome, DeadLetter):
            kills.append((seq, queue, grp, outcome, now))
        else:
            ready.append(seq)
            fx.woken.add(queue)
    if ready:
        await conn.execute(Q.release, ready)
    await kill(conn, node, fx, kills)


async def close_sessions(
    conn: Connection, node: NodeState, fx: CountDeltas, sessions: list[str], now: float
) -> None:
    """End sessions: release their leases, forget their queues and buckets.
    The rows go first: a claim of one of them still in flight holds its row,
    so this waits for it, and then sees the leases it made."""
    await conn.execute(Q.sessions_delete, sessions)
    rows = await conn.fetch(Q.leases_of_sessions, sessions)
    await release(conn, node, fx, rows, now, LeaseEnd.SESSION_ENDED)
    fx.woken.update(q for (q,) in await conn.fetch(Q.consumers_drop_sessions, sessions))
    await conn.execute(Q.owners_drop_sessions, sessions)
    await conn.execute(Q.session_counts_drop, sessions)


# -- the lease monitor --------------------------------------------------------------


async def sweep(conn: Connection, node: NodeState, now: float, housekeeping: bool) -> Swept:
    """One pass, in one transaction (the housekeeping after it in another,
    so releases commit without waiting for it). Every node sweeps; rows
    another node's sweep (or a claim) holds are skipped and left to the next pass."""
    fx = CountDeltas()
    async with conn.transaction():
        expired = [s for (s,) in await conn.fetch(Q.sessions_expired, now, SWEEP_LIMIT)]
        if expired:
            await close_sessions(conn, node, fx, expired, now)
        rows = await conn.fetch(Q.leases_expired, now, SWEEP_LIMIT)
        await release(conn, node, fx, rows, now, LeaseEnd.LEASE_EXPIRED)
        fx.woken.update(q for (q,) in await conn.fetch(Q.promote_due_all, now, SWEEP_LIMIT))
        ttl = await conn.fetch(Q.ttl_expired, now, SWEEP_LIMIT)
        kills: list[Kill] = []
        for seq, queue, grp, state in ttl:
            fx.add(queue, "expired")
            kills.append((seq, queue, grp, after_expiry(state), now))
        await kill(conn, node, fx, kills)
        await fx.flush(conn)
    if housekeeping:
        async with conn.transaction():
            await conn.execute(Q.dedup_sweep, now, SWEEP_LIMIT)
            await conn.execute(Q.results_sweep, now, SWEEP_LIMIT)
            await conn.execute(Q.idempotency_sweep, now, SWEEP_LIMIT)
            await conn.execute(Q.counts_fold, FOLD_ABOVE)
            await conn.execute(Q.session_counts_fold, FOLD_ABOVE)
    return Swept(expired, len(rows), len(ttl), sorted(fx.woken), fx.finished)
