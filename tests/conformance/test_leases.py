"""Leases, fencing tokens, ack/nack/extend/dead, retries and the lease
monitor (docs/semantics.md, "Leases and fencing tokens", "Failure, retries
and dead letters")."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

import pytest

from conveyor.broker.broker import Broker
from conveyor.core.errors import LeaseLost
from conveyor.core.types import Ack, Dead, Delivery, Extend, Nack, NewMessage, ResultStatus

if TYPE_CHECKING:
    from conftest import FakeClock


async def one(broker: Broker, session: str, visibility: float | None = None) -> Delivery:
    got = await broker.receive(session, "q", visibility=visibility)
    assert len(got) == 1, got
    return got[0]


async def lease_counts(broker: Broker) -> tuple[int, int, int, int]:
    s = await broker.stats("q")
    return (s.ready, s.scheduled, s.leased, s.dead)


async def assert_lease_lost(call: Awaitable[object]) -> None:
    with pytest.raises(LeaseLost) as caught:
        await call
    assert caught.value.code == "lease_lost"


async def test_a_delivery_is_leased_to_one_session_until_its_deadline(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q", visibility_timeout=30)
    await broker.enqueue("q", b"a")
    await broker.enqueue("q", b"b")
    first, second = await broker.open_session("1"), await broker.open_session("2")
    a = await one(broker, first)
    assert (a.deadline, a.lease) == (clock.now + 30, 30)
    b = await one(broker, second, visibility=5)  # the receive's own lease length
    assert (b.deadline, b.lease) == (clock.now + 5, 5)
    assert await broker.receive(first, "q") == []
    assert await broker.receive(second, "q") == []
    assert await lease_counts(broker) == (0, 0, 2, 0)
    clock.advance(4.5)
    await broker.sweep_once()
    assert await lease_counts(broker) == (0, 0, 2, 0)
    clock.advance(1)  # b's lease has run out; a's has not
    swept = await broker.sweep_once()
    assert swept.leases_expired == 1
    assert await lease_counts(broker) == (1, 0, 1, 0)
    again = await one(broker, first)
    assert again.id == b.id and again.attempts == 2
    assert (await broker.stats("q")).lease_expired_total == 1


async def test_the_token_grows_with_every_delivery(broker: Broker, clock: FakeClock) -> None:
    await broker.create_queue("q", max_attempts=100)
    await broker.enqueue("q", b"x")
    session = await broker.open_session("c", timeout=1000)
    tokens = []
    d = await one(broker, session)
    tokens.append(d.token)
    await broker.nack(d.id, d.token, delay=0)  # given back
    d = await one(broker, session, visibility=5)
    tokens.append(d.token)
    clock.advance(6)
    await broker.sweep_once()  # lease ran out
    d = await one(broker, session)
    tokens.append(d.token)
    await broker.close_session(session)  # session ended
    session = await broker.open_session("c2")
    d = await one(broker, session)
    tokens.append(d.token)
    assert tokens == sorted(set(tokens)), tokens
    assert d.attempts == 4


async def test_ack_removes_the_message_and_a_second_ack_is_refused(broker: Broker) -> None:
    await broker.create_queue("q")
    await broker.enqueue("q", b"x")
    session = await broker.open_session("c")
    d = await one(broker, session)
    await broker.ack(d.id, d.token)
    assert await lease_counts(broker) == (0, 0, 0, 0)
    await assert_lease_lost(broker.ack(d.id, d.token))
    for call in (
        broker.nack(d.id, d.token),
        broker.extend(d.id, d.token, 10),
        broker.dead(d.id, d.token, "late"),
    ):
        await assert_lease_lost(call)
    stats = await broker.stats("q")
    assert (stats.acked_total, stats.nacked_total, stats.dead_total) == (1, 0, 0)
    assert await broker.dead_letters("q") == []


async def test_a_wrong_token_changes_nothing(broker: Broker, clock: FakeClock) -> None:
    await broker.create_queue("q")
    await broker.enqueue("q", b"x")
    session = await broker.open_session("c", timeout=1000)
    d = await one(broker, session)
    for token in (d.token + 1, d.token + 1000):
        await assert_lease_lost(broker.ack(d.id, token))
        await assert_lease_lost(broker.nack(d.id, token, delay=0))
        await assert_lease_lost(broker.extend(d.id, token, 500))
        await assert_lease_lost(broker.dead(d.id, token, "no"))
    if d.token > 1:
        await assert_lease_lost(broker.ack(d.id, d.token - 1))
    assert await lease_counts(broker) == (0, 0, 1, 0)
    clock.advance(31)  # the refused extend did not move the deadline
    assert (await broker.sweep_once()).leases_expired == 1


async def test_an_id_never_leased_is_refused(broker: Broker) -> None:
    await broker.create_queue("q")
    ready = await broker.enqueue("q", b"never received")
    await assert_lease_lost(broker.ack(ready.id, 1))
    await assert_lease_lost(broker.ack("0000000000000001", 1))
    assert await lease_counts(broker) == (1, 0, 0, 0)


async def test_after_expiry_and_redelivery_the_old_token_is_refused(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q", visibility_timeout=5)
    await broker.enqueue("q", b"x")
    slow, fast = await broker.open_session("slow"), await broker.open_session("fast")
    old = await one(broker, slow)
    clock.advance(6)
    await broker.heartbeat(fast)
    await broker.sweep_once()
    new = await one(broker, fast)
    assert new.id == old.id and new.token > old.token
    await assert_lease_lost(broker.ack(old.id, old.token))
    await assert_lease_lost(broker.nack(old.id, old.token))
    await assert_lease_lost(broker.extend(old.id, old.token, 60))
    await assert_lease_lost(broker.dead(old.id, old.token, "stale"))
    assert await lease_counts(broker) == (0, 0, 1, 0)
    await broker.ack(new.id, new.token)
    assert (await broker.stats("q")).acked_total == 1


async def test_a_late_ack_with_a_still_current_token_succeeds(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q", visibility_timeout=5)
    await broker.enqueue("q", b"x")
    slow = await broker.open_session("slow", timeout=100)
    d = await one(broker, slow)
    clock.advance(6)
    assert (await broker.sweep_once()).leases_expired == 1
    assert await lease_counts(broker) == (1, 0, 0, 0)
    await broker.ack(d.id, d.token)  # nobody else got it meanwhile
    assert await lease_counts(broker) == (0, 0, 0, 0)
    other = await broker.open_session("other")
    assert await broker.receive(other, "q") == []


async def test_a_lease_released_by_the_monitor_keeps_its_place_in_the_order(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q")
    for body in (b"a", b"b", b"c"):
        await broker.enqueue("q", body)
    session = await broker.open_session("c", timeout=100)
    a = await one(broker, session, visibility=5)
    assert a.body == b"a"
    await broker.enqueue("q", b"d")
    clock.advance(6)
    await broker.sweep_once()
    got = await broker.receive(session, "q", max=10)
    assert [d.body for d in got] == [b"a", b"b", b"c", b"d"]


async def test_extend_moves_the_deadline_to_now_plus_seconds(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q", visibility_timeout=30)
    await broker.enqueue("q", b"x")
    session = await broker.open_session("c", timeout=1000)
    d = await one(broker, session)
    clock.advance(20)
    assert await broker.extend(d.id, d.token, 60) == clock.now + 60
    clock.advance(50)  # 70 s after the grant: past the first deadline
    assert (await broker.sweep_once()).leases_expired == 0
    assert await lease_counts(broker) == (0, 0, 1, 0)
    # Shorter than what is left also counts: the deadline is now + seconds.
    assert await broker.extend(d.id, d.token, 2) == clock.now + 2
    clock.advance(3)
    assert (await broker.sweep_once()).leases_expired == 1
    await assert_lease_lost(broker.extend(d.id, d.token, 60))  # lapsed
    assert await lease_counts(broker) == (1, 0, 0, 0)


async def test_nack_backs_off_exponentially_up_to_the_cap(broker: Broker, clock: FakeClock) -> None:
    await broker.create_queue(
        "q", retry_base=2, retry_max=5, retry_jitter=0, max_attempts=10, visibility_timeout=100
    )
    await broker.enqueue("q", b"x")
    session = await broker.open_session("c", timeout=1000)
    d = await one(broker, session)
    for attempt, backoff in ((1, 2.0), (2, 4.0), (3, 5.0), (4, 5.0)):
        assert d.attempts == attempt
        await broker.nack(d.id, d.token, error=f"failure {attempt}")
        assert await lease_counts(broker) == (0, 1, 0, 0)
        clock.advance(backoff - 0.5)
        assert await broker.receive(session, "q") == [], f"visible before {backoff}s"
        clock.advance(0.5)
        d = await one(broker, session)
    assert d.attempts == 5
    assert (await broker.stats("q")).nacked_total == 4


async def test_nack_backoff_has_jitter_within_its_bounds(broker: Broker, clock: FakeClock) -> None:
    await broker.create_queue("q", retry_base=10, retry_jitter=0.5, visibility_timeout=1000)
    await broker.enqueue_many("q", [NewMessage(body=b"%d" % n) for n in range(20)])
    session = await broker.open_session("c", timeout=1000)
    got = await broker.receive(session, "q", max=20)
    await broker.nack_many([Nack(d.id, d.token) for d in got])
    visible_at = []
    for step in range(1, 17):
        clock.advance(1)
        back = await broker.receive(session, "q", max=20)
        visible_at += [step] * len(back)
    assert len(visible_at) == 20
    assert min(visible_at) >= 5, "backoff below base * (1 - jitter)"
    assert max(visible_at) <= 15, "backoff above base * (1 + jitter)"
    assert len(set(visible_at)) > 1, "no jitter: every retry came back at once"


async def test_nack_with_a_delay_uses_it(broker: Broker, clock: FakeClock) -> None:
    await broker.create_queue("q", retry_base=100, visibility_timeout=1000)
    await broker.enqueue("q", b"x")
    session = await broker.open_session("c", timeout=1000)
    d = await one(broker, session)
    await broker.nack(d.id, d.token, delay=7)
    clock.advance(6.5)
    assert await broker.receive(session, "q") == []
    clock.advance(0.5)
    d = await one(broker, session)
    await broker.nack(d.id, d.token, delay=0)  # ready at once
    assert await lease_counts(broker) == (1, 0, 0, 0)
    d = await one(broker, session)
    assert d.attempts == 3


async def test_a_nack_of_the_last_attempt_dead_letters_with_reason_and_last_error(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q", max_attempts=3)
    sent = await broker.enqueue("q", b"doomed", headers={"h": "v"}, priority=4)
    session = await broker.open_session("c", timeout=1000)
    for attempt in (1, 2, 3):
        d = await one(broker, session)
        assert (d.attempts, d.max_attempts) == (attempt, 3)
        await broker.nack(d.id, d.token, delay=0, error=f"boom {attempt}")
    assert await lease_counts(broker) == (0, 0, 0, 1)
    assert await broker.receive(session, "q") == []
    [letter] = await broker.dead_letters("q")
    assert letter.id == sent.id
    assert (letter.body, letter.headers, letter.priority) == (b"doomed", {"h": "v"}, 4)
    assert (letter.attempts, letter.max_attempts) == (3, 3)
    assert letter.last_error == "boom 3"
    assert letter.dead_reason and letter.dead_reason != "expired"
    assert letter.dead_at == clock.now
    stats = await broker.stats("q")
    assert (stats.nacked_total, stats.dead_total) == (3, 1)
    result = await broker.result(sent.id)
    assert result.status == ResultStatus.DEAD and "boom 3" in (result.error or "")


async def test_a_message_s_own_max_attempts_overrides_the_queue_s(broker: Broker) -> None:
    await broker.create_queue("q", max_attempts=5)
    await broker.enqueue("q", b"once", max_attempts=1)
    session = await broker.open_session("c")
    d = await one(broker, session)
    assert d.max_attempts == 1
    await broker.nack(d.id, d.token, delay=0, error="no retry")
    assert await lease_counts(broker) == (0, 0, 0, 1)


async def test_dead_dead_letters_at_once(broker: Broker, clock: FakeClock) -> None:
    await broker.create_queue("q", max_attempts=5)
    sent = await broker.enqueue("q", b"poison")
    session = await broker.open_session("c")
    d = await one(broker, session)
    await broker.dead(d.id, d.token, "unparseable")
    assert await lease_counts(broker) == (0, 0, 0, 1)
    [letter] = await broker.dead_letters("q")
    assert (letter.id, letter.dead_reason, letter.attempts) == (sent.id, "unparseable", 1)
    assert letter.dead_at == clock.now
    result = await broker.result(sent.id)
    assert result.status == ResultStatus.DEAD and "unparseable" in (result.error or "")
    await assert_lease_lost(broker.ack(d.id, d.token))


async def test_a_lease_lost_on_the_last_attempt_dead_letters(
    broker: Broker, clock: FakeClock
) -> None:
    """A message that kills its workers cannot loop forever."""
    await broker.create_queue("q", max_attempts=2, visibility_timeout=5)
    await broker.enqueue("q", b"kills workers")
    session = await broker.open_session("c", timeout=1000)
    await one(broker, session)
    clock.advance(6)
    await broker.sweep_once()
    await one(broker, session)
    clock.advance(6)
    await broker.sweep_once()
    assert await lease_counts(broker) == (0, 0, 0, 1)
    [letter] = await broker.dead_letters("q")
    assert letter.attempts == 2 and letter.dead_reason
    # A session that ends holding the last attempt: dead-lettered too.
    await broker.enqueue("q", b"kills sessions", max_attempts=1)
    await one(broker, session)
    await broker.close_session(session)
    assert await lease_counts(broker) == (0, 0, 0, 2)


async def test_batch_settles_report_an_outcome_per_item(broker: Broker, clock: FakeClock) -> None:
    await broker.create_queue("q", max_attempts=5, visibility_timeout=100)
    await broker.enqueue_many("q", [NewMessage(body=b"%d" % n) for n in range(8)])
    session = await broker.open_session("c", timeout=1000)
    d = await broker.receive(session, "q", max=8)
    outcomes = await broker.ack_many([Ack(d[0].id, d[0].token), Ack(d[1].id, d[1].token + 1)])
    assert outcomes[0] is None and isinstance(outcomes[1], LeaseLost)
    outcomes = await broker.nack_many([Nack(d[0].id, d[0].token), Nack(d[2].id, d[2].token, 0.0)])
    assert isinstance(outcomes[0], LeaseLost) and outcomes[1] is None
    extended = await broker.extend_many([Extend(d[3].id, d[3].token, 50), Extend(d[0].id, 9, 50)])
    assert extended[0] == clock.now + 50 and isinstance(extended[1], LeaseLost)
    outcomes = await broker.dead_many(
        [Dead(d[4].id, d[4].token, "x"), Dead(d[4].id, d[4].token, "y")]
    )
    assert outcomes[0] is None and isinstance(outcomes[1], LeaseLost)
    stats = await broker.stats("q")
    assert (stats.acked_total, stats.nacked_total, stats.dead_total) == (1, 1, 1)
    assert (stats.ready, stats.leased, stats.dead) == (1, 5, 1)
    [letter] = await broker.dead_letters("q")
    assert letter.dead_reason == "x"


async def test_the_lease_monitor_releases_only_expired_leases(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q", visibility_timeout=10)
    await broker.enqueue_many("q", [NewMessage(body=b"%d" % n) for n in range(6)])
    session = await broker.open_session("c", timeout=1000)
    short = await broker.receive(session, "q", max=2, visibility=3)
    await broker.receive(session, "q", max=4)
    assert (await broker.sweep_once()).leases_expired == 0
    clock.advance(4)
    swept = await broker.sweep_once()
    assert (swept.leases_expired, swept.sessions_expired) == (2, [])
    assert "q" in swept.woken
    assert await lease_counts(broker) == (2, 0, 4, 0)
    again = await broker.receive(session, "q", max=10)
    assert {d.id for d in again} == {d.id for d in short}
    assert (await broker.sweep_once()).leases_expired == 0
    stats = await broker.stats("q")
    assert (stats.lease_expired_total, stats.delivered_total) == (2, 8)


async def test_one_batch_naming_a_message_twice_acks_it_once(broker: Broker) -> None:
    await broker.create_queue("q")
    for body in (b"a", b"b", b"c"):
        await broker.enqueue("q", body)
    session = await broker.open_session("1")
    a, b, c = await broker.receive(session, "q", max=3)
    outcomes = await broker.ack_many(
        [
            Ack(a.id, a.token),
            Ack(a.id, a.token),  # the same ack again: already done
            Ack(b.id, b.token + 1),  # a wrong token first ...
            Ack(b.id, b.token),  # ... does not spoil the right one after it
            Ack(c.id, c.token),
        ]
    )
    assert [type(o).__name__ for o in outcomes] == [
        "NoneType", "LeaseLost", "LeaseLost", "NoneType", "NoneType",
    ]  # fmt: skip
    stats = await broker.stats("q")
    assert (stats.leased, stats.acked_total) == (0, 3)
