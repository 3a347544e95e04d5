"""Durability: what a persistent store holds survives closing and reopening
it (docs/semantics.md, "Enqueue", "Sessions and heartbeats", "Stores").

They run on the persistent stores only (SQLite in memory is deselected,
never skipped, so that nothing here skips in CI). A store that
is not shared belongs to one broker, so reopening it ends the previous run's
sessions and releases their leases at once; on a shared store the sessions
live on in the database and their leases come back when the sessions time
out, like those of any node that went away."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from conveyor.broker.broker import Broker
from conveyor.core.errors import LeaseLost, SessionNotFound
from conveyor.core.types import Binding, ResultStatus

if TYPE_CHECKING:
    from conftest import FakeClock, StoreFactory


pytestmark = pytest.mark.stores("sqlite-file", "postgres")


def require_persistent(broker: Broker) -> None:
    assert broker.store.capabilities.persistent, "a persistent store was expected"


async def reopen(broker: Broker, store_factory: StoreFactory, clock: FakeClock) -> Broker:
    await broker.close()
    again = Broker(store_factory(), broker.config, clock=clock, monitor=False)
    await again.start()
    return again


async def test_everything_stored_survives_a_reopen(
    broker: Broker, store_factory: StoreFactory, clock: FakeClock
) -> None:
    require_persistent(broker)
    config = await broker.create_queue(
        "q", visibility_timeout=60, max_attempts=4, max_length=100, buckets=8
    )
    await broker.create_queue("other")
    await broker.bind("events.#", "q")
    ready = await broker.enqueue(
        "q", b"ready", priority=7, headers={"h": "v"}, group="g", dedup_key="once"
    )
    scheduled = await broker.enqueue("q", b"scheduled", delay=120)
    to_lease = await broker.enqueue("q", b"leased", priority=9)
    to_kill = await broker.enqueue("q", b"dead", priority=8)
    to_ack = await broker.enqueue("q", b"acked", priority=9)
    session = await broker.open_session("before", timeout=10)
    leased, acked, dead = await broker.receive(session, "q", max=3)
    assert (leased.id, acked.id, dead.id) == (to_lease.id, to_ack.id, to_kill.id)
    await broker.dead(dead.id, dead.token, "poison")
    await broker.ack(acked.id, acked.token, result=b"the result")
    before = await broker.stats("q")

    broker = await reopen(broker, store_factory, clock)
    try:
        assert await broker.get_queue("q") == config
        assert [c.name for c in await broker.queues()] == ["other", "q"]
        assert await broker.bindings() == [Binding("events.#", "q")]
        after = await broker.stats("q")
        assert (after.enqueued_total, after.delivered_total, after.acked_total) == (
            before.enqueued_total,
            before.delivered_total,
            before.acked_total,
        )
        assert (after.scheduled, after.dead) == (1, 1)
        if not broker.store.capabilities.shared:
            # The previous run's session ended with it; its lease is ready.
            assert (after.ready, after.leased) == (2, 0)
            assert await broker.sessions() == []
            with pytest.raises(SessionNotFound):
                await broker.heartbeat(session)
        else:
            clock.advance(11)  # the old session times out, like a dead node's
            await broker.sweep_once()
        consumer = await broker.open_session("after", timeout=1000)
        got = await broker.receive(consumer, "q", max=10)
        assert [d.id for d in got] == [to_lease.id, ready.id]
        again, first = got
        assert again.token > leased.token, "a token from before the reopen could match"
        assert again.attempts == 2
        assert (first.body, first.priority, first.headers, first.group) == (
            b"ready",
            7,
            {"h": "v"},
            "g",
        )
        with pytest.raises(LeaseLost):
            await broker.ack(leased.id, leased.token)
        [letter] = await broker.dead_letters("q")
        assert (letter.id, letter.dead_reason) == (to_kill.id, "poison")
        result = await broker.result(to_ack.id)
        assert (result.status, result.body) == (ResultStatus.OK, b"the result")
        assert (await broker.enqueue("q", b"dup", dedup_key="once")).duplicate
        clock.advance(120)
        await broker.heartbeat(consumer)
        [late] = await broker.receive(consumer, "q")
        assert late.id == scheduled.id
        newer = await broker.enqueue("q", b"new")
        assert newer.id > max(ready.id, scheduled.id, to_ack.id)
    finally:
        await broker.close()


async def test_a_reopened_store_keeps_counting_attempts(
    broker: Broker, store_factory: StoreFactory, clock: FakeClock
) -> None:
    """A message that keeps taking its broker down is dead-lettered, not
    redelivered forever."""
    require_persistent(broker)
    await broker.create_queue("q", max_attempts=2)
    await broker.enqueue("q", b"crashes the broker")
    try:
        for _ in range(2):
            session = await broker.open_session("c", timeout=10)
            assert len(await broker.receive(session, "q")) == 1
            broker = await reopen(broker, store_factory, clock)
            if broker.store.capabilities.shared:
                clock.advance(11)
                await broker.sweep_once()
        stats = await broker.stats("q")
        assert (stats.ready, stats.leased, stats.dead) == (0, 0, 1)
        [letter] = await broker.dead_letters("q")
        assert letter.attempts == 2
    finally:
        await broker.close()
