"""The edge of a lease's life: ``extend`` at and past its deadline, before
the lease monitor has run (docs/semantics.md, "Leases and fencing tokens").

A lease is live until its deadline, the deadline included; past it, extend
raises LeaseLost whether or not the monitor has released the lease yet, so
the answer never depends on when the monitor last ran. The refusal changes
nothing: the monitor still releases the lease, and a late ack with the token
still succeeds until someone else receives the message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from conveyor.broker.broker import Broker
from conveyor.core.errors import LeaseLost
from conveyor.core.types import Delivery, Extend

if TYPE_CHECKING:
    from conftest import FakeClock


async def leased(broker: Broker, visibility: float = 30) -> tuple[str, Delivery]:
    await broker.create_queue("q", visibility_timeout=visibility)
    await broker.enqueue("q", b"x")
    session = await broker.open_session("c", timeout=1000)
    (d,) = await broker.receive(session, "q")
    return session, d


async def counts(broker: Broker) -> tuple[int, int, int]:
    s = await broker.stats("q")
    return (s.ready, s.leased, s.lease_expired_total)


async def test_a_lease_at_its_deadline_is_still_extended(broker: Broker, clock: FakeClock) -> None:
    _, d = await leased(broker)
    clock.advance(30)  # now == deadline: the monitor would not release it yet
    assert (await broker.sweep_once()).leases_expired == 0
    assert await broker.extend(d.id, d.token, 10) == clock.now + 10


async def test_a_lapsed_lease_is_not_extended_before_the_monitor_runs(
    broker: Broker, clock: FakeClock
) -> None:
    _, d = await leased(broker)
    clock.advance(30.5)  # past the deadline, no sweep yet
    with pytest.raises(LeaseLost):
        await broker.extend(d.id, d.token, 60)
    assert await counts(broker) == (0, 1, 0), "the refusal released nothing"
    # Nor did it move the deadline: the monitor releases the lease now.
    assert (await broker.sweep_once()).leases_expired == 1
    assert await counts(broker) == (1, 0, 1)
    with pytest.raises(LeaseLost):
        await broker.extend(d.id, d.token, 60)  # released: refused as well


async def test_a_lapsed_unswept_lease_may_still_be_acked(broker: Broker, clock: FakeClock) -> None:
    """The refusal of extend is no verdict on the token: nobody else got the
    message, so the late ack still settles it."""
    _, d = await leased(broker)
    clock.advance(45)
    with pytest.raises(LeaseLost):
        await broker.extend(d.id, d.token, 60)
    await broker.ack(d.id, d.token)
    assert await counts(broker) == (0, 0, 0)
    assert (await broker.sweep_once()).leases_expired == 0


async def test_a_batch_extends_the_live_lease_and_refuses_the_lapsed_one(
    broker: Broker, clock: FakeClock
) -> None:
    session, short = await leased(broker, visibility=30)
    await broker.enqueue("q", b"y")
    (long,) = await broker.receive(session, "q", visibility=60)
    clock.advance(40)
    out = await broker.extend_many(
        [Extend(short.id, short.token, 5), Extend(long.id, long.token, 5)]
    )
    assert isinstance(out[0], LeaseLost) and out[1] == clock.now + 5


async def test_extending_one_lease_twice_in_a_batch_keeps_the_last_deadline(
    broker: Broker, clock: FakeClock
) -> None:
    """On PostgreSQL both land in one round: the first finds the lease live,
    the last decides the deadline."""
    _, d = await leased(broker)
    clock.advance(29)
    out = await broker.extend_many([Extend(d.id, d.token, 50), Extend(d.id, d.token, 20)])
    assert out == [clock.now + 50, clock.now + 20]
    clock.advance(21)  # past the last deadline, not the first
    assert (await broker.sweep_once()).leases_expired == 1


async def test_extending_a_lapsed_lease_twice_in_a_batch_refuses_both(
    broker: Broker, clock: FakeClock
) -> None:
    _, d = await leased(broker)
    clock.advance(31)
    out = await broker.extend_many([Extend(d.id, d.token, 50), Extend(d.id, d.token, 20)])
    assert all(isinstance(o, LeaseLost) for o in out), out
    assert (await broker.sweep_once()).leases_expired == 1
