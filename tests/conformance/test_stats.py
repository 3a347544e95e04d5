"""Per-queue statistics (docs/semantics.md, "Statistics")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.broker.broker import Broker
from conveyor.core.types import NewMessage, QueueStats

if TYPE_CHECKING:
    from conftest import FakeClock


def current(s: QueueStats) -> tuple[int, int, int, int]:
    return (s.ready, s.scheduled, s.leased, s.dead)


def totals(s: QueueStats) -> dict[str, int]:
    return {
        "enqueued": s.enqueued_total,
        "delivered": s.delivered_total,
        "acked": s.acked_total,
        "nacked": s.nacked_total,
        "dead": s.dead_total,
        "expired": s.expired_total,
        "lease_expired": s.lease_expired_total,
    }


async def test_an_empty_queue(broker: Broker) -> None:
    await broker.create_queue("q")
    stats = await broker.stats("q")
    assert stats.queue == "q"
    assert current(stats) == (0, 0, 0, 0)
    assert (stats.consumers, stats.oldest_ready_age) == (0, None)
    assert set(totals(stats).values()) == {0}


async def test_stats_follow_every_transition(broker: Broker, clock: FakeClock) -> None:
    await broker.create_queue("q", max_attempts=2, visibility_timeout=10)
    await broker.create_queue("elsewhere")
    await broker.enqueue("elsewhere", b"not counted here")
    await broker.enqueue_many(
        "q",
        [
            NewMessage(body=b"a"),
            NewMessage(body=b"b"),
            NewMessage(body=b"g1", group="g"),
            NewMessage(body=b"g2", group="g"),  # blocked: counts as ready
            NewMessage(body=b"later", delay=100),
            NewMessage(body=b"short-lived", ttl=5),
        ],
    )
    stats = await broker.stats("q")
    assert current(stats) == (5, 1, 0, 0)
    assert stats.oldest_ready_age == 0.0
    clock.advance(4)
    assert (await broker.stats("q")).oldest_ready_age == 4.0

    session = await broker.open_session("c", timeout=1000)
    other = await broker.open_session("d", timeout=1000)
    got = await broker.receive(session, "q", max=3)  # a, b, g1
    await broker.receive(other, "q")  # short-lived
    assert sorted(d.body for d in got) == [b"a", b"b", b"g1"]
    stats = await broker.stats("q")
    assert current(stats) == (1, 1, 4, 0)
    assert stats.consumers == 2
    a, b, g1 = sorted(got, key=lambda d: d.body)
    await broker.ack(a.id, a.token)
    await broker.nack(b.id, b.token, delay=50)
    await broker.dead(g1.id, g1.token, "bad")  # g2 leads now
    stats = await broker.stats("q")
    assert current(stats) == (1, 2, 1, 1)
    clock.advance(11)  # the lease of short-lived runs out, and its TTL
    await broker.sweep_once()
    stats = await broker.stats("q")
    assert current(stats) == (1, 2, 0, 2)
    assert totals(stats) == {
        "enqueued": 6,
        "delivered": 4,
        "acked": 1,
        "nacked": 1,
        "dead": 2,
        "expired": 1,
        "lease_expired": 1,
    }
    assert stats.oldest_ready_age == 15.0  # g2, ready since the enqueue
    assert (await broker.stats("elsewhere")).enqueued_total == 1


async def test_counts_after_purge_and_redrive(broker: Broker, clock: FakeClock) -> None:
    await broker.create_queue("q", max_attempts=1)
    await broker.enqueue_many(
        "q",
        [
            NewMessage(body=b"fails"),
            NewMessage(body=b"g1", group="g"),
            NewMessage(body=b"g2", group="g"),
            NewMessage(body=b"later", delay=100),
        ],
    )
    session = await broker.open_session("c", timeout=1000)
    got = await broker.receive(session, "q", max=2)  # fails, g1
    for d in got:
        await broker.nack(d.id, d.token)  # out of attempts: both dead, g2 leads
    assert current(await broker.stats("q")) == (1, 1, 0, 2)
    assert await broker.purge("q") == 2  # g2 and later; the dead letters stay
    assert current(await broker.stats("q")) == (0, 0, 0, 2)
    assert await broker.redrive("q") == 2
    assert current(await broker.stats("q")) == (2, 0, 0, 0)
    await broker.enqueue("q", b"g3", group="g")  # behind the redriven g1: blocked
    assert current(await broker.stats("q")) == (3, 0, 0, 0)


async def test_the_oldest_ready_message_is_found_across_priorities(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q")
    await broker.enqueue("q", b"old, low", priority=0)
    clock.advance(3)
    await broker.enqueue("q", b"new, high", priority=9)
    await broker.enqueue("q", b"due later, low", priority=0, delay=1)
    clock.advance(2)
    stats = await broker.stats("q")
    assert stats.oldest_ready_age == 5.0
    session = await broker.open_session("c", timeout=1000)
    got = await broker.receive(session, "q", max=1)
    assert [d.body for d in got] == [b"new, high"]
    # The next oldest ready one (the delayed one is due by now but still
    # scheduled until a claim or a sweep promotes it).
    assert (await broker.stats("q")).oldest_ready_age == 5.0
    await broker.ack(got[0].id, got[0].token)
    got = await broker.receive(session, "q", max=1)
    assert [d.body for d in got] == [b"old, low"]
    await broker.sweep_once()
    assert (await broker.stats("q")).oldest_ready_age == 1.0
