"""Enqueue and the message's fields: ids, batches, priority, delay, TTL,
dedup keys, groups, headers, max attempts and max length
(docs/semantics.md, "Messages", "Enqueue", "Delivery")."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from conveyor.broker.broker import Broker
from conveyor.core.errors import BodyTooLarge, InvalidArgument, QueueFull
from conveyor.core.types import EnqueueResult, MessageState, NewMessage, ResultStatus

if TYPE_CHECKING:
    from conftest import FakeClock


async def counts(broker: Broker, queue: str = "q") -> tuple[int, int, int, int, int]:
    s = await broker.stats(queue)
    return (s.ready, s.scheduled, s.leased, s.dead, s.enqueued_total)


async def take_all(broker: Broker, session: str, queue: str = "q") -> list[bytes]:
    """Receive one at a time (acking each) until nothing is ready; the bodies."""
    bodies = []
    while got := await broker.receive(session, queue):
        bodies.append(got[0].body)
        await broker.ack(got[0].id, got[0].token)
    return bodies


async def test_ids_are_unique_16_hex_digits_growing_in_enqueue_order(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q")
    ids = []
    for n in range(30):
        result = await broker.enqueue("q", b"%d" % n)
        assert result == EnqueueResult(result.id, duplicate=False)
        ids.append(result.id)
        if n % 10 == 0:
            clock.advance(0.0005)  # some in the same millisecond, some not
    batch = await broker.enqueue_many("q", [NewMessage(body=b"b%d" % n) for n in range(30)])
    ids += [r.id for r in batch]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids), ids
    assert len(set(ids)) == 60
    assert ids == sorted(ids), "ids must grow in enqueue order"
    assert [int(i, 16) for i in ids] == sorted(int(i, 16) for i in ids)


async def test_every_field_reaches_the_consumer(broker: Broker, clock: FakeClock) -> None:
    await broker.create_queue("q", visibility_timeout=20.0, max_attempts=4)
    result = await broker.enqueue(
        "q",
        b"\x00binary\xff",
        priority=7,
        group="customer-1",
        headers={"trace": "abc", "kind": "order"},
        max_attempts=2,
    )
    await broker.enqueue("q", b"plain")
    session = await broker.open_session("c")
    first, second = await broker.receive(session, "q", max=2)
    assert first.id == result.id
    assert first.queue == "q"
    assert first.body == b"\x00binary\xff"
    assert first.headers == {"trace": "abc", "kind": "order"}
    assert (first.priority, first.group, first.attempts, first.max_attempts) == (
        7,
        "customer-1",
        1,
        2,
    )
    assert first.enqueued_at == clock.now
    assert (first.lease, first.deadline) == (20.0, clock.now + 20.0)
    assert first.token >= 1
    # Defaults: no headers, priority 0, no group, the queue's max_attempts.
    assert (second.body, second.headers, second.priority, second.group) == (b"plain", {}, 0, None)
    assert second.max_attempts == 4


async def test_bytes_like_bodies_and_the_largest_body_are_accepted(broker: Broker) -> None:
    await broker.create_queue("q")
    largest = b"x" * broker.config.max_body
    await broker.enqueue("q", largest)
    await broker.enqueue("q", bytearray(b"array"))
    await broker.enqueue("q", b"")
    with pytest.raises(BodyTooLarge):
        await broker.enqueue("q", largest + b"x")
    session = await broker.open_session("c")
    got = await broker.receive(session, "q", max=10)
    assert [d.body for d in got] == [largest, b"array", b""]
    assert all(type(d.body) is bytes for d in got)


async def test_a_batch_is_stored_whole_in_order(broker: Broker) -> None:
    await broker.create_queue("q")
    results = await broker.enqueue_many(
        "q", [NewMessage(body=b"%d" % n, priority=n % 2) for n in range(10)]
    )
    assert len(results) == 10
    assert [r.id for r in results] == sorted(r.id for r in results)
    assert await counts(broker) == (10, 0, 0, 0, 10)
    session = await broker.open_session("c")
    got = await broker.receive(session, "q", max=10)
    assert [d.body for d in got] == [b"1", b"3", b"5", b"7", b"9", b"0", b"2", b"4", b"6", b"8"]


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (NewMessage(body=b"x", priority=10), InvalidArgument),
        (NewMessage(body=b"x", delay=-1.0), InvalidArgument),
        (NewMessage(body=b"x" * (64 * 1024 + 1)), BodyTooLarge),
    ],
    ids=["priority", "delay", "body"],
)
async def test_a_batch_with_one_bad_message_stores_nothing(
    broker: Broker, bad: NewMessage, error: type[Exception]
) -> None:
    await broker.create_queue("q")
    await broker.enqueue("q", b"before")
    batch = [
        NewMessage(body=b"a"),
        NewMessage(body=b"b", dedup_key="k"),
        bad,
        NewMessage(body=b"c"),
    ]
    with pytest.raises(error) as caught:
        await broker.enqueue_many("q", batch)
    assert type(caught.value) is error
    assert await counts(broker) == (1, 0, 0, 0, 1)
    # The dedup key of the refused batch was not remembered either.
    assert not (await broker.enqueue("q", b"b", dedup_key="k")).duplicate
    session = await broker.open_session("c")
    assert await take_all(broker, session) == [b"before", b"b"]


async def test_a_batch_that_does_not_fit_max_length_stores_nothing(broker: Broker) -> None:
    await broker.create_queue("q", max_length=5)
    await broker.enqueue_many("q", [NewMessage(body=b"%d" % n) for n in range(3)])
    with pytest.raises(QueueFull) as caught:
        await broker.enqueue_many("q", [NewMessage(body=b"x%d" % n) for n in range(3)])
    assert caught.value.code == "queue_full"
    assert await counts(broker) == (3, 0, 0, 0, 3)
    await broker.enqueue_many("q", [NewMessage(body=b"y%d" % n) for n in range(2)])
    assert await counts(broker) == (5, 0, 0, 0, 5)


async def test_max_length_counts_ready_delayed_and_leased_not_dead(broker: Broker) -> None:
    await broker.create_queue("q", max_length=3)
    await broker.enqueue("q", b"ready")
    await broker.enqueue("q", b"delayed", delay=100)
    await broker.enqueue("q", b"to-lease", priority=9)
    with pytest.raises(QueueFull):
        await broker.enqueue("q", b"one too many")
    session = await broker.open_session("c")
    [leased] = await broker.receive(session, "q")
    assert leased.body == b"to-lease"
    with pytest.raises(QueueFull):  # a leased message still counts
        await broker.enqueue("q", b"one too many")
    assert await counts(broker) == (1, 1, 1, 0, 3)
    await broker.dead(leased.id, leased.token, "out of the way")
    await broker.enqueue("q", b"fits now")  # a dead letter does not count
    with pytest.raises(QueueFull):
        await broker.enqueue("q", b"one too many")
    [ready] = await broker.receive(session, "q")
    await broker.ack(ready.id, ready.token)
    await broker.enqueue("q", b"fits again")
    assert await counts(broker) == (2, 1, 0, 1, 5)


async def test_priority_high_first_then_enqueue_order(broker: Broker) -> None:
    await broker.create_queue("q")
    priorities = [0, 5, 9, 5, 0, 9, 1, 0, 9, 3]
    for n, p in enumerate(priorities):
        await broker.enqueue("q", b"%d" % n, priority=p)
    session = await broker.open_session("c")
    expected = [b"%d" % n for n, _ in sorted(enumerate(priorities), key=lambda x: (-x[1], x[0]))]
    assert await take_all(broker, session) == expected


async def test_a_delayed_message_is_not_visible_before_its_time(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q")
    await broker.enqueue("q", b"urgent-later", priority=9, delay=10)
    await broker.enqueue("q", b"now")
    session = await broker.open_session("c")
    assert await counts(broker) == (1, 1, 0, 0, 2)
    assert await take_all(broker, session) == [b"now"]
    clock.advance(9.5)
    assert await broker.receive(session, "q") == []
    clock.advance(0.5)
    [d] = await broker.receive(session, "q")
    assert d.body == b"urgent-later"


async def test_delay_zero_is_ready_at_once(broker: Broker) -> None:
    await broker.create_queue("q")
    await broker.enqueue("q", b"x", delay=0)
    assert await counts(broker) == (1, 0, 0, 0, 1)


async def test_a_message_past_its_ttl_is_never_delivered_and_dead_letters_as_expired(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q")
    short = await broker.enqueue("q", b"short", ttl=5)
    await broker.enqueue("q", b"long", ttl=50)
    await broker.enqueue("q", b"delayed-too-long", ttl=5, delay=10)
    session = await broker.open_session("c")
    clock.advance(5)
    await broker.heartbeat(session)
    assert [d.body for d in await broker.receive(session, "q", max=10, visibility=600)] == [b"long"]
    clock.advance(5)
    await broker.heartbeat(session)
    swept = await broker.sweep_once()
    assert swept.messages_expired == 2
    assert await broker.receive(session, "q", max=10) == []
    letters = await broker.dead_letters("q")
    assert [m.body for m in letters] == [b"short", b"delayed-too-long"]
    assert {m.dead_reason for m in letters} == {"expired"}
    assert {m.state for m in letters} == {MessageState.DEAD}
    stats = await broker.stats("q")
    assert (stats.dead, stats.expired_total, stats.dead_total) == (2, 2, 2)
    result = await broker.result(short.id)
    assert result.status == ResultStatus.DEAD
    assert "expired" in (result.error or "")


async def test_a_leased_message_past_its_ttl_is_not_delivered_again(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q", visibility_timeout=10)
    await broker.enqueue("q", b"x", ttl=5)
    first = await broker.open_session("first")
    assert len(await broker.receive(first, "q")) == 1
    clock.advance(11)  # past the TTL and the lease
    second = await broker.open_session("second")
    await broker.sweep_once()
    assert await broker.receive(second, "q") == []
    [letter] = await broker.dead_letters("q")
    assert letter.dead_reason == "expired"


async def test_a_dedup_key_within_the_window_adds_nothing(broker: Broker, clock: FakeClock) -> None:
    await broker.create_queue("q")  # default window: 300 s
    first = await broker.enqueue("q", b"first", dedup_key="order-1")
    assert not first.duplicate
    again = await broker.enqueue("q", b"second", dedup_key="order-1", priority=9)
    assert again == EnqueueResult(first.id, duplicate=True)
    clock.advance(299)
    assert await broker.enqueue("q", b"third", dedup_key="order-1") == again
    other = await broker.enqueue("q", b"other key", dedup_key="order-2")
    assert not other.duplicate and other.id != first.id
    assert await counts(broker) == (2, 0, 0, 0, 2)
    session = await broker.open_session("c")
    assert await take_all(broker, session) == [b"first", b"other key"]
    # Still remembered after the first was acked, until the window ends.
    assert (await broker.enqueue("q", b"late", dedup_key="order-1")).duplicate
    clock.advance(1.5)
    after = await broker.enqueue("q", b"after the window", dedup_key="order-1")
    assert not after.duplicate and after.id != first.id
    assert await take_all(broker, session) == [b"after the window"]


async def test_the_dedup_window_ends_exactly_at_its_edge(broker: Broker, clock: FakeClock) -> None:
    """A key is remembered for ``dedup_window`` seconds from its first
    enqueue: a tick before the edge it is a duplicate, at the edge and after
    it a new message. One key per probe, so no probe restarts another's
    window."""
    clock.now = 1_700_000_000.0  # a time whose sums below are exact
    window, tick = 300.0, 0.001
    await broker.create_queue("q", dedup_window=window)
    first = {
        key: await broker.enqueue("q", key.encode(), dedup_key=key)
        for key in ("before", "at", "after")
    }
    start = clock.now
    clock.now = start + window - tick
    assert await broker.enqueue("q", b"x", dedup_key="before") == EnqueueResult(
        first["before"].id, duplicate=True
    )
    clock.now = start + window
    at = await broker.enqueue("q", b"x", dedup_key="at")
    assert not at.duplicate and at.id != first["at"].id
    clock.now = start + window + tick
    after = await broker.enqueue("q", b"x", dedup_key="after")
    assert not after.duplicate and after.id != first["after"].id
    assert (await broker.stats("q")).ready == 5


async def test_dedup_applies_within_one_batch(broker: Broker) -> None:
    await broker.create_queue("q")
    results = await broker.enqueue_many(
        "q",
        [
            NewMessage(body=b"a", dedup_key="k"),
            NewMessage(body=b"b", dedup_key="k"),
            NewMessage(body=b"c"),
            NewMessage(body=b"d", dedup_key="j"),
        ],
    )
    assert [r.duplicate for r in results] == [False, True, False, False]
    assert results[1].id == results[0].id
    assert len({results[0].id, results[2].id, results[3].id}) == 3
    assert await counts(broker) == (3, 0, 0, 0, 3)


async def test_dedup_keys_are_per_queue_and_follow_the_window_setting(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("short", dedup_window=10)
    await broker.create_queue("never", dedup_window=0)
    await broker.create_queue("other")
    a = await broker.enqueue("short", b"a", dedup_key="k")
    assert not (await broker.enqueue("other", b"a", dedup_key="k")).duplicate
    assert not (await broker.enqueue("never", b"a", dedup_key="k")).duplicate
    assert not (await broker.enqueue("never", b"b", dedup_key="k")).duplicate
    assert (await counts(broker, "never"))[0] == 2
    clock.advance(9.5)
    assert (await broker.enqueue("short", b"b", dedup_key="k")).id == a.id
    clock.advance(1)
    assert not (await broker.enqueue("short", b"c", dedup_key="k")).duplicate
    assert (await counts(broker, "short"))[0] == 2


async def test_idempotency_key_repeats_the_first_reply(broker: Broker) -> None:
    await broker.create_queue("q")
    batch = [NewMessage(body=b"a"), NewMessage(body=b"b")]
    first = await broker.enqueue_many("q", batch, idempotency_key="producer-7:42")
    again = await broker.enqueue_many("q", batch, idempotency_key="producer-7:42")
    assert again == first
    assert await counts(broker) == (2, 0, 0, 0, 2)
    other = await broker.enqueue_many("q", batch, idempotency_key="producer-7:43")
    assert {r.id for r in other}.isdisjoint(r.id for r in first)


async def test_headers_and_groups_survive_as_given(broker: Broker) -> None:
    await broker.create_queue("q")
    headers = {"ünïcode": "välue", "empty": "", "x-long": "v" * 1000}
    await broker.enqueue("q", b"x", headers=headers, group="g/ü:1")
    session = await broker.open_session("c")
    [d] = await broker.receive(session, "q")
    assert d.headers == headers
    assert d.group == "g/ü:1"
