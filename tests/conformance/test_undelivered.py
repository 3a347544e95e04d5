"""A delivery that never reached the code that handles it is handed back
without counting as an attempt (docs/semantics.md, "Failure, retries and
dead letters"): a nack item with ``undelivered`` set, on every store."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from conveyor.broker.broker import Broker
from conveyor.core.errors import InvalidArgument, LeaseLost
from conveyor.core.types import Delivery, Nack

if TYPE_CHECKING:
    from conftest import FakeClock


async def one(broker: Broker, session: str) -> Delivery:
    got = await broker.receive(session, "q")
    assert len(got) == 1, got
    return got[0]


async def test_an_undelivered_message_is_ready_at_once_and_its_attempt_not_counted(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q", max_attempts=2, retry_base=60)
    message_id = (await broker.enqueue("q", b"a")).id
    session = await broker.open_session("s")
    first = await one(broker, session)
    await broker.nack(first.id, first.token, error="boom")  # a real failure: attempt 1
    clock.advance(120)
    second = await one(broker, session)
    assert second.attempts == 2  # its last allowed attempt
    # Handed back unread, at its last attempt: not dead-lettered, due now
    # (the queue's 60 s backoff does not apply), the attempt taken back.
    outcomes = await broker.nack_many([Nack(second.id, second.token, undelivered=True)])
    assert outcomes == [None]
    stats = await broker.stats("q")
    assert (stats.ready, stats.scheduled, stats.leased, stats.dead) == (1, 0, 0, 0)
    assert stats.nacked_total == 1  # the failure only
    third = await one(broker, session)
    assert (third.id, third.attempts) == (message_id, 2)
    assert third.token > second.token
    # It keeps the error of its real failure; a nack of this attempt, its
    # last, dead-letters it as usual.
    await broker.nack(third.id, third.token)
    (dead,) = await broker.dead_letters("q")
    assert dead.attempts == 2 and dead.dead_reason == "failed on all 2 attempts"
    assert dead.last_error == "boom"


async def test_an_undelivered_nack_with_a_stale_token_changes_nothing(broker: Broker) -> None:
    await broker.create_queue("q")
    await broker.enqueue("q", b"a")
    session = await broker.open_session("s")
    delivery = await one(broker, session)
    await broker.ack(delivery.id, delivery.token)
    with pytest.raises(LeaseLost):
        await broker.nack(delivery.id, delivery.token + 1)
    (outcome,) = await broker.nack_many([Nack(delivery.id, delivery.token, undelivered=True)])
    assert isinstance(outcome, LeaseLost)
    stats = await broker.stats("q")
    assert (stats.ready, stats.leased, stats.acked_total) == (0, 0, 1)


async def test_an_undelivered_head_still_leads_its_group(broker: Broker) -> None:
    await broker.create_queue("q")
    for body in (b"1", b"2"):
        await broker.enqueue("q", body, group="g")
    session = await broker.open_session("s")
    head = await one(broker, session)
    await broker.nack_many([Nack(head.id, head.token, undelivered=True)])
    again = await one(broker, session)
    assert (again.body, again.attempts) == (b"1", 1)
    assert await broker.receive(session, "q") == []  # "2" still waits behind it


async def test_undelivered_must_be_a_boolean(broker: Broker) -> None:
    await broker.create_queue("q")
    await broker.enqueue("q", b"a")
    session = await broker.open_session("s")
    delivery = await one(broker, session)
    with pytest.raises(InvalidArgument, match="undelivered"):
        await broker.nack_many([Nack(delivery.id, delivery.token, undelivered="yes")])  # type: ignore[arg-type]
