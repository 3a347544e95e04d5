"""What the state machine (stateful_machine.py) checks after its steps: each
delivery against what the model says could be delivered, the broker's
stats and sessions, and every row of the store.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Coroutine
from typing import Any, TypeVar

from stateful_model import BUCKETS, DEAD, LEASED, MAX_ATTEMPTS, PENDING, QUEUE, VISIBILITY, Model
from stateful_stores import ExampleStores, FakeClock

from conveyor.broker.broker import Broker
from conveyor.core.ring import bucket_of, bucket_owners
from conveyor.core.types import Delivery, QueueStats

T = TypeVar("T")


class ModelChecks:
    """Checks of a broker against the model, for BrokerMachine."""

    model: Model
    stores: ExampleStores
    clock: FakeClock

    @property
    def b(self) -> Broker:
        raise NotImplementedError

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        raise NotImplementedError

    def check_delivery(self, d: Delivery, sid: str, now: float) -> None:
        m = self.model.msgs.get(d.id)
        assert m is not None, f"delivered an id never enqueued: {d.id}"
        assert m.status == PENDING, f"{d.id} delivered while {m.status}"
        assert m.holder is None, f"{d.id} delivered to {sid} while {m.holder} holds its lease"
        assert m.available_at <= now, f"{d.id} delivered before its time"
        assert not m.expired(now), f"{d.id} delivered past its TTL"
        if m.group is not None:
            head = self.model.head(m.group)
            assert head is m, f"group {m.group}: {d.id} delivered, {head and head.id} leads"
            sessions = self.model.sessions
            owners = bucket_owners(
                {s: float(x.capacity) for s, x in sessions.items() if x.subscribed},
                QUEUE,
                BUCKETS,
            )
            bucket = bucket_of(m.group, BUCKETS)
            assert owners.get(bucket) == sid, (
                f"{d.id} of bucket {bucket} went to {sid}, owner is {owners.get(bucket)}"
            )
        assert (d.body, d.priority, d.group, d.queue) == (m.body, m.priority, m.group, QUEUE), d
        assert d.token > m.token, f"token of {d.id} did not grow: {m.token} -> {d.token}"
        assert d.attempts == m.attempts + 1, f"{d.id}: attempts {d.attempts} after {m.attempts}"
        assert d.max_attempts == MAX_ATTEMPTS, d
        assert d.deadline == now + VISIBILITY, f"{d.id}: deadline {d.deadline - now}s away"

    def broker_agrees_with_the_model(self, stats: QueueStats | None = None) -> None:
        model = self.model
        stats = stats or self.run(self.b.stats(QUEUE))
        pending, live = model.pending(), model.live()
        # Nothing lost: every message not acked, dead or purged is still in the queue.
        assert stats.leased == len(live), (stats, len(live))
        assert stats.ready + stats.scheduled == len(pending) - len(live), (stats, len(pending))
        assert stats.dead == len(model.with_status(DEAD)), stats
        totals = (
            stats.enqueued_total,
            stats.acked_total,
            stats.dead_total,
            stats.delivered_total,
            stats.nacked_total,
            stats.expired_total,
            stats.lease_expired_total,
        )
        assert totals == model.totals.as_tuple(), (
            f"totals (enq, ack, dead, deliv, nack, exp, lease_exp) {totals} != {model.totals}"
        )
        # Groups: at most one message of a group leased, one session per bucket.
        groups = Counter(m.group for m in live if m.group is not None)
        assert all(n == 1 for n in groups.values()), groups
        holders: dict[int, set[str]] = {}
        for m in live:
            if m.bucket is not None and m.holder is not None:
                holders.setdefault(m.bucket, set()).add(m.holder)
        assert all(len(h) == 1 for h in holders.values()), holders
        # Sessions: the open ones, each with its leases.
        infos = {s.id: s.leases for s in self.run(self.b.sessions())}
        expected = {sid: sum(1 for m in live if m.holder == sid) for sid in model.sessions}
        assert infos == expected, f"sessions and their leases: broker {infos}, model {expected}"

    def rows_agree_with_the_model(self, stats: QueueStats | None = None) -> None:
        """Every row is a message the model holds, in a state it allows; the
        per-state counts that stats reports are those of the rows."""
        rows = self.run(self.stores.rows(self.b.store, QUEUE))
        found = {seq: (state, holder) for seq, state, holder, _ in rows}
        expected = self.model.expected_rows()
        lost = sorted(set(expected) - set(found))
        back = sorted(set(found) - set(expected))
        assert not lost and not back, f"rows lost: {lost}; rows that should be gone: {back}"
        for seq, (state, holder) in found.items():
            states, want = expected[seq]
            assert state in states and (state != LEASED or holder == want), (
                f"{seq:016x}: state {state} held by {holder}; model: {sorted(states)}, {want}"
            )
        by_state = Counter(state for state, _ in found.values())
        counted = (by_state[0] + by_state[4], by_state[1], by_state[2], by_state[3])
        stats = stats or self.run(self.b.stats(QUEUE))
        assert (stats.ready, stats.scheduled, stats.leased, stats.dead) == counted, (stats, rows)
        ready_at = [at for _, state, _, at in rows if state == 0]
        oldest = self.clock.now - min(ready_at) if ready_at else None
        assert stats.oldest_ready_age == (None if oldest is None else max(0.0, oldest)), (
            stats,
            rows,
        )
