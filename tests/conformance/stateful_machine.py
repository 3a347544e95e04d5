"""The hypothesis state machine of test_stateful.py: a real Broker on a
store of one kind, driven by rules and held to the model of
stateful_model.py after every step (the checks are in stateful_checks.py).

Its rules enqueue (priorities, delays, TTLs, dedup keys, groups, in batches
and one call at a time, also behind a group head that is out), open, use
and close consumer sessions, receive, settle any delivery ever made (mostly
stale ones), extend leases (lapsed ones too), heartbeat, move the clock and
run the lease monitor, purge, redrive dead letters, change the queue's
max_length, and restart the broker on the same data. At the end the queue
is drained: every pending message is still there and comes out, groups in
order, and the dead letters are the model's.

Hypothesis stateful tests are synchronous: the examples of one test share
an event loop, and each gets a broker on an empty store (stateful_stores.py),
closed in teardown.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar
from unittest import mock

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from stateful_checks import ModelChecks
from stateful_model import (
    BUCKETS,
    DEAD,
    DEDUP_WINDOW,
    GROUPS,
    MAX_ATTEMPTS,
    PENDING,
    QUEUE,
    RETRY,
    SESSION_TIMEOUT,
    VISIBILITY,
    Model,
    Sess,
    Spec,
)
from stateful_stores import CountingIds, ExampleStores, FakeClock

from conveyor.broker import broker as broker_module
from conveyor.broker.broker import Broker, BrokerConfig
from conveyor.core.errors import LeaseLost, QueueFull, SessionNotFound
from conveyor.core.ids import parse_id
from conveyor.core.ring import bucket_of, bucket_owners
from conveyor.core.types import NewMessage

T = TypeVar("T")

SPEC = st.builds(
    Spec,
    priority=st.integers(0, 3),
    group=st.sampled_from((None, None, None, *GROUPS)),
    delay=st.sampled_from((None, None, 0.0, 0.5, 3.0)),
    ttl=st.sampled_from((None, None, None, 1.0, 4.0, 12.0)),
    dedup_key=st.sampled_from((None, None, None, "k0", "k1")),
)
BATCH = st.lists(SPEC, min_size=1, max_size=3)
# Past the clock's start every time the stores see is later than the real
# clock, which the SQLite store uses for what it releases when it opens.
CLOCK_START = 2_000_000_000.0


class BrokerMachine(ModelChecks, RuleBasedStateMachine):
    def __init__(self, stores: ExampleStores) -> None:
        super().__init__()
        self.stores = stores
        self.loop = stores.loop
        self.ids_patch = mock.patch.object(broker_module, "secrets", CountingIds())
        self.ids_patch.start()
        self.clock = FakeClock(CLOCK_START)
        self.model = Model()
        self.counter = 0
        self.restarts = 0
        self.clean = True  # no step failed: teardown may drain
        self.broker: Broker | None = None
        try:
            self.broker = self.start_broker(self.run(stores.fresh()))
            self.run(
                self.broker.create_queue(
                    QUEUE,
                    visibility_timeout=VISIBILITY,
                    max_attempts=MAX_ATTEMPTS,
                    dedup_window=DEDUP_WINDOW,
                    retry_base=RETRY.base,
                    retry_max=RETRY.cap,
                    retry_jitter=RETRY.jitter,
                    buckets=BUCKETS,
                )
            )
        except BaseException:
            self.close_broker()
            raise

    def start_broker(self, store: Any) -> Broker:
        broker = Broker(
            store,
            # Every subscribed session stays in the ring however long it has
            # not received: whether an idle one counts would otherwise depend
            # on the broker's ring cache, which ages by real time, not by
            # this clock, and the model could not say who owns a bucket.
            BrokerConfig(max_body=4096, session_timeout=SESSION_TIMEOUT, consumer_idle=1e9),
            clock=self.clock,
            monitor=False,
        )
        self.run(broker.start())
        return broker

    def close_broker(self) -> None:
        try:
            if self.broker is not None:
                self.run(self.broker.close())
        finally:
            self.ids_patch.stop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    @property
    def b(self) -> Broker:
        assert self.broker is not None
        return self.broker

    def teardown(self) -> None:
        try:
            if self.clean:
                self.drain_and_check()
        finally:
            self.close_broker()

    # -- helpers --------------------------------------------------------------------

    def pick_session(self, data: st.DataObject, closed_too: bool) -> str:
        choices = sorted(self.model.sessions)
        if closed_too and self.model.closed and (not choices or data.draw(st.integers(0, 4)) == 0):
            choices = self.model.closed
        return data.draw(st.sampled_from(choices))

    # -- rules: producing --------------------------------------------------------------

    @initialize(
        batches=st.lists(BATCH, min_size=1, max_size=4),
        capacities=st.lists(st.integers(1, 3), min_size=1, max_size=3),
        first_takes=st.integers(0, 2),
    )
    def start_busy(
        self, batches: list[list[Spec]], capacities: list[int], first_takes: int
    ) -> None:
        """Begin with some consumers and some messages, and the first consumer
        holding a few, so that short runs still deliver and the sessions that
        join later must respect the buckets it holds leases in."""
        for capacity in capacities:
            self.open_session(capacity)
        for specs in batches:
            self.enqueue(specs)
        if first_takes:
            self.do_receive(next(iter(self.model.sessions)), first_takes)

    @rule(specs=BATCH)
    def enqueue(self, specs: list[Spec]) -> None:
        self.clean = False
        model, now = self.model, self.clock.now
        bodies = []
        for _ in specs:
            self.counter += 1
            bodies.append(b"m%d" % self.counter)
        fits = model.fits(specs, now)
        try:
            results = self.run(self.send(specs, bodies))
        except QueueFull:
            assert not fits, f"QueueFull at {len(model.pending())} of {model.max_length}"
            return
        assert fits, f"{len(model.pending())} of {model.max_length} + {len(specs)} accepted"
        assert len(results) == len(specs), "one result per message"
        last = max((m.seq for m in model.msgs.values()), default=-1)
        for spec, body, result in zip(specs, bodies, results, strict=True):
            first = model.first_of(spec.dedup_key, now)
            if first is not None:
                assert result.duplicate and result.id == first, (
                    f"{spec.dedup_key} within its window: {result}, first was {first}"
                )
                continue
            assert not result.duplicate, f"{spec.dedup_key}: a duplicate of nothing: {result}"
            assert parse_id(result.id) > last, "ids must grow in enqueue order"
            last = parse_id(result.id)
            model.add(result.id, body, spec, now)

    async def send(self, specs: list[Spec], bodies: list[bytes]) -> list[Any]:
        """One message in its own call, more in one batch."""
        if len(specs) == 1:
            s = specs[0]
            return [
                await self.b.enqueue(
                    QUEUE,
                    bodies[0],
                    priority=s.priority,
                    group=s.group,
                    delay=s.delay,
                    ttl=s.ttl,
                    dedup_key=s.dedup_key,
                )
            ]
        batch = [
            NewMessage(
                body=body,
                priority=s.priority,
                group=s.group,
                delay=s.delay,
                ttl=s.ttl,
                dedup_key=s.dedup_key,
            )
            for s, body in zip(specs, bodies, strict=True)
        ]
        return await self.b.enqueue_many(QUEUE, batch)

    def busy_groups(self) -> list[str]:
        return sorted({m.group for m in self.model.live() if m.group is not None})

    @precondition(lambda self: self.busy_groups())
    @rule(data=st.data(), priority=st.integers(0, 3))
    def enqueue_behind_a_held_head(self, data: st.DataObject, priority: int) -> None:
        """A later call adds to a group whose head is leased: the new message
        waits until the head is acked or dead, and its bucket's owner, asked
        at once, does not get it."""
        group = data.draw(st.sampled_from(self.busy_groups()))
        self.enqueue([Spec(priority=priority, group=group)])
        owners = bucket_owners(
            {s: float(x.capacity) for s, x in self.model.sessions.items() if x.subscribed},
            QUEUE,
            BUCKETS,
        )
        owner = owners.get(bucket_of(group, BUCKETS))
        if owner is not None:
            self.do_receive(owner, 3)

    @rule(limit=st.sampled_from((None, 2, 5, 10)))
    def set_max_length(self, limit: int | None) -> None:
        """A bound below the depth refuses new messages until the queue drains."""
        self.clean = False
        config = self.run(self.b.configure_queue(QUEUE, max_length=limit))
        assert config.max_length == limit
        self.model.max_length = limit

    @rule()
    def purge(self) -> None:
        self.clean = False
        purged = self.run(self.b.purge(QUEUE))
        expected = self.model.purge()
        assert purged == expected, f"purge removed {purged}, {expected} were waiting"

    @precondition(lambda self: self.model.with_status(DEAD))
    @rule(data=st.data(), every=st.booleans())
    def redrive(self, data: st.DataObject, every: bool) -> None:
        """All dead letters, or some ids (in any order, maybe twice, maybe not dead)."""
        self.clean = False
        ids = None
        if not every:
            ids = data.draw(
                st.lists(st.sampled_from(sorted(self.model.msgs)), min_size=1, max_size=4)
            )
        count = self.run(self.b.redrive(QUEUE, ids))
        expected = self.model.redrive(ids, self.clock.now)
        assert count == expected, f"redrive of {ids or 'all'}: {count}, expected {expected}"

    # -- rules: sessions and receiving ---------------------------------------------------

    @rule(capacity=st.integers(1, 3))
    def open_session(self, capacity: int) -> None:
        self.clean = False
        now, model = self.clock.now, self.model
        sid = self.run(self.b.open_session("model", capacity=capacity))
        assert sid not in model.sessions and sid not in model.closed, f"session id {sid} reused"
        model.sessions[sid] = Sess(capacity, now, now)

    @precondition(lambda self: self.model.sessions)
    @rule(data=st.data())
    def close_session(self, data: st.DataObject) -> None:
        self.clean = False
        sid = self.pick_session(data, closed_too=False)
        self.run(self.b.close_session(sid))
        self.model.forget_session(sid, "session ended")

    @precondition(lambda self: self.model.closed)
    @rule(data=st.data())
    def close_closed_session(self, data: st.DataObject) -> None:
        self.clean = False
        self.run(self.b.close_session(data.draw(st.sampled_from(self.model.closed))))

    @precondition(lambda self: self.model.sessions or self.model.closed)
    @rule(data=st.data(), limit=st.integers(1, 3))
    def receive(self, data: st.DataObject, limit: int) -> None:
        """Receive on a session, sometimes one that is closed or expired."""
        self.do_receive(self.pick_session(data, closed_too=True), limit)

    # Receiving on a live session again, so that it is drawn more often.
    @precondition(lambda self: self.model.sessions)
    @rule(data=st.data(), limit=st.integers(1, 3))
    def receive_live(self, data: st.DataObject, limit: int) -> None:
        self.do_receive(self.pick_session(data, closed_too=False), limit)

    def do_receive(self, sid: str, limit: int) -> None:
        self.clean = False
        now, model = self.clock.now, self.model
        if sid not in model.sessions:
            with pytest.raises(SessionNotFound):
                self.run(self.b.receive(sid, QUEUE, max=limit))
            return
        session = model.sessions[sid]
        session.subscribed = True  # receive registers it as a consumer first
        got = self.run(self.b.receive(sid, QUEUE, max=limit))
        assert len(got) <= limit
        assert len({d.id for d in got}) == len(got), "one message twice in one receive"
        for d in got:
            self.check_delivery(d, sid, now)
        orders = [model.msgs[d.id].order() for d in got]
        assert orders == sorted(orders), "deliveries out of order"
        # Ungrouped messages are open to every session: none that was left
        # behind may come before one that was delivered.
        taken = {d.id for d in got}
        left = [
            m
            for m in model.pending()
            if m.group is None and m.deliverable(now) and m.id not in taken
        ]
        if left:
            assert len(got) == limit, f"{len(left)} ready messages, {len(got)} of {limit} delivered"
            first_left = min(m.order() for m in left)
            assert max(orders) < first_left, "a later message went out before an earlier one"
        for d in got:
            model.deliver(model.msgs[d.id], d.token, sid, d.deadline)
        session.seen_max = now
        session.seen_min = max(session.seen_min, now if got else now - 1.0)

    # -- rules: settling and extending -------------------------------------------------

    @precondition(lambda self: self.model.deliveries)
    @rule(
        data=st.data(),
        op=st.sampled_from(("ack", "nack", "dead")),
        which=st.sampled_from(("latest", "latest", "older", "newer")),
        delay=st.sampled_from((None, 0.0, 2.0)),
    )
    def settle_any(self, data: st.DataObject, op: str, which: str, delay: float | None) -> None:
        """Settle any delivery ever made: mostly stale ones."""
        self.settle(data.draw(st.sampled_from(self.model.deliveries)), op, which, delay)

    @precondition(lambda self: self.model.held())
    @rule(
        data=st.data(),
        op=st.sampled_from(("ack", "ack", "nack", "dead")),
        delay=st.sampled_from((None, 0.0, 2.0)),
    )
    def settle_held(self, data: st.DataObject, op: str, delay: float | None) -> None:
        """Settle a message held now (or released with its token still honoured)."""
        self.settle(data.draw(st.sampled_from(self.model.held())), op, "latest", delay)

    def settle(
        self, delivery: tuple[str, int, str], op: str, which: str, delay: float | None
    ) -> None:
        self.clean = False
        message_id, token, _ = delivery
        token = {"latest": token, "older": max(1, token - 1), "newer": token + 1}[which]
        m = self.model.msgs[message_id]
        expect_ok = m.status == PENDING and m.honoured and token == m.token
        try:
            if op == "ack":
                self.run(self.b.ack(message_id, token))
            elif op == "nack":
                self.run(self.b.nack(message_id, token, delay=delay, error="boom"))
            else:
                self.run(self.b.dead(message_id, token, "poison"))
        except LeaseLost:
            assert not expect_ok, f"{op} of {message_id} with its current token {token} refused"
            return
        assert expect_ok, (
            f"{op} of {message_id} with token {token} accepted (current {m.token}, {m.status})"
        )
        if op == "ack":
            self.model.ack(m)
        elif op == "dead":
            self.model.kill(m, "poison")
        else:
            self.model.nack(m, delay, self.clock.now)

    @precondition(lambda self: self.model.deliveries)
    @rule(data=st.data(), seconds=st.sampled_from((1.0, 5.0, 20.0)))
    def extend(self, data: st.DataObject, seconds: float) -> None:
        """Only a live lease is extended: held, current token, deadline not
        passed (docs/semantics.md); a lapsed one is refused whether or not
        the monitor has released it yet."""
        self.clean = False
        message_id, token, _ = data.draw(st.sampled_from(self.model.deliveries))
        m, now = self.model.msgs[message_id], self.clock.now
        expect_ok = (
            m.status == PENDING and m.holder is not None and token == m.token and now <= m.deadline
        )
        try:
            deadline = self.run(self.b.extend(message_id, token, seconds))
        except LeaseLost:
            assert not expect_ok, f"extend of live lease {message_id}/{token} refused"
            return
        assert expect_ok, (
            f"extend of {message_id}/{token} accepted (current {m.token}, holder {m.holder},"
            f" {now - m.deadline:+}s past its deadline)"
        )
        assert deadline == now + seconds, f"extend by {seconds}s gave {deadline - now}s"
        m.deadline = deadline

    # -- rules: time, the monitor, restarts ------------------------------------------

    @precondition(lambda self: self.model.sessions or self.model.closed)
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        self.clean = False
        sid = self.pick_session(data, closed_too=True)
        if sid not in self.model.sessions:
            with pytest.raises(SessionNotFound):
                self.run(self.b.heartbeat(sid))
            return
        self.run(self.b.heartbeat(sid))
        self.model.sessions[sid].seen_min = self.model.sessions[sid].seen_max = self.clock.now

    @rule(seconds=st.sampled_from((0.25, 0.5, 1.0, 2.0, 3.0, 6.0, 12.0, 40.0)), sweep=st.booleans())
    def advance(self, seconds: float, sweep: bool) -> None:
        self.clean = False
        self.clock.advance(seconds)
        if sweep:
            self.sweep()

    def sweep(self) -> None:
        now = self.clock.now
        swept = self.run(self.b.sweep_once())
        expired = set(swept.sessions_expired)
        assert expired <= set(self.model.sessions), "swept a session that was not open"
        for sid, s in self.model.sessions.items():
            if s.seen_max + SESSION_TIMEOUT < now:
                assert sid in expired, f"silent session {sid} was not expired"
            if s.seen_min + SESSION_TIMEOUT >= now:
                assert sid not in expired, f"session {sid} expired while alive"
        leases, messages = self.model.sweep(now, expired)
        assert swept.leases_expired == leases, (
            f"sweep released {swept.leases_expired} expired leases, {leases} were past deadline"
        )
        assert swept.messages_expired == messages, (
            f"sweep expired {swept.messages_expired} messages, {messages} were past their TTL"
        )

    # At most twice a run: a restart costs more than any other step (a
    # PostgreSQL node's new connections prepare every statement again).
    @precondition(lambda self: self.stores.persistent and self.restarts < 2)
    @rule()
    def restart(self) -> None:
        """Close the broker and start a new one on the same data. Nothing
        acknowledged is lost and nothing acked comes back (the invariants
        compare every row). On SQLite the sessions of the old run end and
        their leases are released, tokens still honoured; on PostgreSQL
        sessions live in the database and keep their leases."""
        self.clean = False
        self.restarts += 1
        old, self.broker = self.broker, None
        assert old is not None
        self.run(old.close())
        # A restart takes time: ids are time-ordered, and the SQLite store
        # takes the next one from the clock and the ids it still holds.
        self.clock.advance(1.0)
        self.broker = self.start_broker(self.run(self.stores.reopen()))
        if not self.stores.sessions_survive_restart:
            for sid in sorted(self.model.sessions):
                self.model.forget_session(sid, "broker restarted")

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def broker_and_store_agree_with_the_model(self) -> None:
        stats = self.run(self.b.stats(QUEUE))
        self.broker_agrees_with_the_model(stats)
        self.rows_agree_with_the_model(stats)
        self.clean = True

    # -- the end ---------------------------------------------------------------------

    def drain_and_check(self) -> None:
        """Close every session, then one fresh consumer must get every pending
        message, each group in order; the dead letters are the model's."""
        model = self.model
        for sid in sorted(model.sessions):
            self.run(self.b.close_session(sid))
            model.forget_session(sid, "session ended")
        self.broker_agrees_with_the_model()
        sid = self.run(self.b.open_session("drain"))
        model.sessions[sid] = Sess(1, self.clock.now, self.clock.now, subscribed=True)
        for _ in range(len(model.msgs) + 2):
            self.clock.advance(10.0)  # past every delay and backoff
            now = self.clock.now
            self.run(self.b.heartbeat(sid))
            model.sessions[sid].seen_min = model.sessions[sid].seen_max = now
            self.sweep()
            remaining = model.pending()
            if not remaining:
                break
            got = self.run(self.b.receive(sid, QUEUE, max=1000))
            assert got, f"nothing delivered while {len(remaining)} messages are pending"
            for d in got:
                self.check_delivery(d, sid, now)
                model.deliver(model.msgs[d.id], d.token, sid, d.deadline)
            for d in got:
                self.run(self.b.ack(d.id, d.token))
                model.ack(model.msgs[d.id])
        assert not model.pending(), "the drain did not finish"
        self.broker_agrees_with_the_model()
        self.rows_agree_with_the_model()
        stats = self.run(self.b.stats(QUEUE))
        assert (stats.ready, stats.scheduled, stats.leased) == (0, 0, 0), stats
        letters = self.run(self.b.dead_letters(QUEUE, limit=10_000))
        expected = {m.id: m.reason for m in model.with_status(DEAD)}
        found = {x.id: x.dead_reason for x in letters}
        assert found == expected, f"dead letters {found}, expected {expected}"
