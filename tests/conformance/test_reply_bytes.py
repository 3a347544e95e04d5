"""Replies bounded in bytes (docs/semantics.md, "Delivery"; docs/operations.md,
"Limits"): a claim and a dead-letter page stop before the message that would
pass their byte budget, always taking the first; what is not taken stays as
it was (no attempt counted, nothing dead-lettered), and comes with the next
receive. Run on every store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from conveyor.broker.broker import Broker, BrokerConfig
from conveyor.broker.replies import MAX_REASON
from conveyor.core.errors import InvalidArgument
from conveyor.core.types import NewMessage
from conveyor.store.base import ClaimOp, delivery_size

if TYPE_CHECKING:
    from conftest import FakeClock, StoreFactory

KiB = 1024
BODY = 60 * KiB
MAX_REPLY = 2 * 1024 * KiB
ONE = delivery_size(BODY, 0)


@pytest.fixture
async def small_replies(store_factory: StoreFactory, clock: FakeClock) -> AsyncIterator[Broker]:
    """A broker whose replies carry at most 2 MiB: 32 messages of 60 KiB."""
    config = BrokerConfig(max_body=64 * KiB, max_reply_bytes=MAX_REPLY)
    b = Broker(store_factory(), config, clock=clock, monitor=False)
    await b.start()
    try:
        yield b
    finally:
        await b.close()


def body(n: int, size: int = BODY) -> bytes:
    return b"%06d" % n + b"." * (size - 6)


async def fill(broker: Broker, count: int, **settings: object) -> list[str]:
    await broker.create_queue("q", **settings)
    sent = await broker.enqueue_many("q", [NewMessage(body=body(n)) for n in range(count)])
    return [r.id for r in sent]


async def test_a_claim_stops_before_the_message_that_would_pass_its_budget(
    broker: Broker, clock: FakeClock
) -> None:
    ids = await fill(broker, 10)
    session = await broker.open_session("c")
    await broker.store.subscribe(session, "q", clock.now)
    op = ClaimOp("q", session, 10, clock.now, 30.0, [], max_bytes=3 * ONE + ONE - 1)
    claimed = await broker.store.claim(op)
    assert [d.id for d in claimed.deliveries] == ids[:3]
    assert claimed.size == 3 * ONE
    rest = await broker.store.claim(ClaimOp("q", session, 10, clock.now, 30.0, []))
    assert [d.id for d in rest.deliveries] == ids[3:]
    assert rest.size == 7 * ONE
    assert {d.attempts for d in claimed.deliveries + rest.deliveries} == {1}


async def test_a_claim_always_takes_the_first_message_and_counts_headers(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q")
    headers = {"h": "x" * 5000}
    await broker.enqueue_many(
        "q", [NewMessage(body=b"a" * 100, headers=headers), NewMessage(body=b"b" * 100)]
    )
    session = await broker.open_session("c")
    await broker.store.subscribe(session, "q", clock.now)
    first = await broker.store.claim(ClaimOp("q", session, 10, clock.now, 30.0, [], max_bytes=1))
    assert [d.body for d in first.deliveries] == [b"a" * 100]
    assert first.size > delivery_size(100, 5000)  # the headers' stored bytes count
    second = await broker.store.claim(
        ClaimOp("q", session, 10, clock.now, 30.0, [], max_bytes=delivery_size(100, 0))
    )
    assert [d.body for d in second.deliveries] == [b"b" * 100]


async def test_the_budget_takes_messages_in_delivery_order(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q")
    low = await broker.enqueue_many("q", [NewMessage(body=body(n, 1000)) for n in range(5)])
    high = await broker.enqueue_many(
        "q", [NewMessage(body=body(n, 1000), priority=5) for n in range(5)]
    )
    session = await broker.open_session("c")
    await broker.store.subscribe(session, "q", clock.now)
    one = delivery_size(1000, 0)
    claimed = await broker.store.claim(
        ClaimOp("q", session, 10, clock.now, 30.0, [], max_bytes=7 * one)
    )
    assert [d.id for d in claimed.deliveries] == [r.id for r in high] + [r.id for r in low[:2]]


async def test_a_grouped_claim_honours_the_budget(small_replies: Broker) -> None:
    broker = small_replies
    await broker.create_queue("q", buckets=1)
    sent = await broker.enqueue_many(
        "q", [NewMessage(body=body(n), group=f"g{n}") for n in range(40)]
    )
    session = await broker.open_session("c", capacity=40)
    got: list[str] = []
    while len(got) < 40:
        batch = await broker.receive(session, "q", max=40)
        assert batch, "a group head must come once the one before is acked"
        assert len(batch) <= MAX_REPLY // ONE
        got += [d.id for d in batch]
        for d in batch:
            await broker.ack(d.id, d.token)
    assert got == [r.id for r in sent]


async def test_receive_of_forty_returns_fewer_never_an_error_and_loses_nothing(
    small_replies: Broker,
) -> None:
    broker = small_replies
    ids = await fill(broker, 40)
    session = await broker.open_session("c", timeout=1000)
    first = await broker.receive(session, "q", max=40)
    assert 1 <= len(first) < 40
    assert len(first) == MAX_REPLY // ONE
    # The next receive gets the rest at once: a claim cut short by bytes is
    # not taken for a drained queue.
    second = await broker.receive(session, "q", max=40)
    assert [d.id for d in first + second] == ids[: len(first) + len(second)]
    assert second
    got = first + second
    while len(got) < 40:
        more = await broker.receive(session, "q", max=40)
        assert more
        got += more
    assert [d.id for d in got] == ids
    assert {d.attempts for d in got} == {1}
    stats = await broker.stats("q")
    assert (stats.delivered_total, stats.leased, stats.ready, stats.dead) == (40, 40, 0, 0)


async def test_a_receive_takes_only_what_its_budget_grants(small_replies: Broker) -> None:
    broker = small_replies
    ids = await fill(broker, 20)
    session = await broker.open_session("c", timeout=1000)

    class Stingy:
        """Grants the least it is asked for, and records what is kept."""

        def __init__(self) -> None:
            self.kept: list[tuple[int, int]] = []

        async def reserve(self, want: int, at_least: int) -> int:
            assert want >= at_least >= broker.reply_sizes.delivery
            return at_least

        def keep(self, reserved: int, used: int) -> None:
            self.kept.append((reserved, used))

    budget = Stingy()
    got = await broker.receive(session, "q", max=20, budget=budget)
    least = broker.reply_sizes.delivery
    assert 1 < len(got) < 20
    assert [d.id for d in got] == ids[: least // ONE]
    assert budget.kept == [(least, len(got) * ONE)]
    [after] = await broker.receive(session, "q", max=1, budget=budget)
    assert after.id == ids[len(got)]


async def test_dead_letters_page_through_by_bytes(small_replies: Broker) -> None:
    broker = small_replies
    ids = await fill(broker, 40)
    session = await broker.open_session("c", timeout=1000)
    while got := await broker.receive(session, "q", max=40):
        for d in got:
            await broker.dead(d.id, d.token, "poison " + "r" * 1000)
    pages: list[list[str]] = []
    after = None
    while page := await broker.dead_letters("q", limit=100, after=after):
        assert len(page) < 40
        pages.append([m.id for m in page])
        after = page[-1].id
    assert len(pages) > 1
    assert [i for page in pages for i in page] == ids
    # The first dead letter always comes, whatever the budget.
    [only] = await broker.store.dead_letters("q", 100, None, 1)
    assert only.id == ids[0]


async def test_an_overlong_nack_error_or_dead_reason_is_refused(broker: Broker) -> None:
    await broker.create_queue("q")
    await broker.enqueue("q", b"x")
    session = await broker.open_session("c")
    [d] = await broker.receive(session, "q")
    with pytest.raises(InvalidArgument):
        await broker.nack(d.id, d.token, error="e" * (MAX_REASON + 1))
    with pytest.raises(InvalidArgument):
        await broker.dead(d.id, d.token, "r" * (MAX_REASON + 1))
    assert (await broker.stats("q")).leased == 1  # nothing changed
    await broker.dead(d.id, d.token, "r" * MAX_REASON)
    [letter] = await broker.dead_letters("q")
    assert letter.dead_reason == "r" * MAX_REASON


def test_a_reply_budget_smaller_than_one_message_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="max_reply_bytes"):
        BrokerConfig(max_body=1 << 20, max_reply_bytes=1 << 20)
