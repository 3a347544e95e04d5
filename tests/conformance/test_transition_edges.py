"""Details of the store transitions that only mutation testing showed no
test deciding (scripts/mutation.sh): each test here failed against a
mutant that every other test let through."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from conveyor.broker.broker import Broker
from conveyor.core.errors import LeaseLost, QueueFull, ResultTimeout, SessionNotFound
from conveyor.core.ids import id_time
from conveyor.core.types import Ack, Dead, Delivery, Extend, Nack, NewMessage, ResultStatus

if TYPE_CHECKING:
    from conftest import FakeClock


async def two_leased(broker: Broker) -> tuple[Delivery, Delivery]:
    await broker.create_queue("q")
    await broker.enqueue_many("q", [NewMessage(body=b"a"), NewMessage(body=b"b")])
    session = await broker.open_session("c", timeout=1000)
    first, second = await broker.receive(session, "q", max=2)
    return first, second


@pytest.mark.parametrize("kind", ["ack", "nack", "extend", "dead"])
async def test_a_stale_token_first_in_a_batch_does_not_stop_the_rest(
    broker: Broker, clock: FakeClock, kind: str
) -> None:
    a, b = await two_leased(broker)
    stale, good = (a.id, a.token + 7), (b.id, b.token)
    if kind == "ack":
        out: list[object] = list(await broker.ack_many([Ack(*stale), Ack(*good)]))
    elif kind == "nack":
        out = list(await broker.nack_many([Nack(*stale), Nack(*good)]))
    elif kind == "extend":
        out = list(await broker.extend_many([Extend(*stale, 60), Extend(*good, 60)]))
    else:
        out = list(await broker.dead_many([Dead(*stale, "x"), Dead(*good, "x")]))
    assert len(out) == 2 and isinstance(out[0], LeaseLost), out
    assert out[1] == (clock.now + 60 if kind == "extend" else None), out
    stats = await broker.stats("q")
    assert stats.leased == (2 if kind == "extend" else 1), stats


@pytest.mark.parametrize("kind", ["ack", "nack", "extend", "dead"])
async def test_lease_lost_names_the_message_and_the_token(broker: Broker, kind: str) -> None:
    a, _ = await two_leased(broker)
    token = a.token + 5
    calls = {
        "ack": lambda: broker.ack(a.id, token),
        "nack": lambda: broker.nack(a.id, token),
        "extend": lambda: broker.extend(a.id, token, 5),
        "dead": lambda: broker.dead(a.id, token, "x"),
    }
    with pytest.raises(LeaseLost) as caught:
        await calls[kind]()
    assert f"message {a.id} is not leased with token {token}" in caught.value.message


async def test_a_dead_letter_s_result_is_its_reason_and_then_its_error(broker: Broker) -> None:
    await broker.create_queue("q", max_attempts=1)
    sent = await broker.enqueue_many("q", [NewMessage(body=b"a"), NewMessage(body=b"b")])
    session = await broker.open_session("c")
    first, second = await broker.receive(session, "q", max=2)
    await broker.dead(first.id, first.token, "cannot parse")
    await broker.nack(second.id, second.token, error="ValueError: boom")
    assert (await broker.result(sent[0].id)).error == "cannot parse"
    assert (await broker.result(sent[1].id)).error == "failed on all 1 attempts: ValueError: boom"


async def test_what_the_monitor_dead_letters_is_reported_finished_with_its_reason(
    broker: Broker, clock: FakeClock
) -> None:
    """A lease that runs out on the last attempt, and a session that goes
    silent holding one: both dead-lettered at the sweep's time, with the
    reason saying why, and reported as finished (result waiters wake)."""
    await broker.create_queue("q", max_attempts=1, visibility_timeout=5)
    await broker.enqueue_many("q", [NewMessage(body=b"a"), NewMessage(body=b"b")])
    quiet = await broker.open_session("quiet", timeout=20)
    [lapsed] = await broker.receive(quiet, "q", visibility=5)
    [silent] = await broker.receive(quiet, "q", visibility=100)
    clock.advance(6)
    swept = await broker.sweep_once()
    assert swept.finished == [lapsed.id] and swept.leases_expired == 1
    clock.advance(20)
    swept = await broker.sweep_once()
    assert swept.finished == [silent.id] and swept.sessions_expired == [quiet]
    letters = {m.id: m for m in await broker.dead_letters("q")}
    assert letters[lapsed.id].dead_reason == "lease expired after 1 attempts"
    assert letters[silent.id].dead_reason == "session ended after 1 attempts"
    assert letters[silent.id].dead_at == clock.now
    assert letters[lapsed.id].dead_at == clock.now - 20
    result = await broker.result(silent.id)
    assert (result.status, result.finished_at) == (ResultStatus.DEAD, clock.now)


async def test_the_monitor_makes_due_messages_ready_in_the_counts(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q")
    await broker.enqueue("q", b"x", delay=5)
    clock.advance(5)
    stats = await broker.stats("q")
    assert (stats.ready, stats.scheduled) == (0, 1)  # due, not yet made ready
    await broker.sweep_once()
    stats = await broker.stats("q")
    assert (stats.ready, stats.scheduled, stats.oldest_ready_age) == (1, 0, 0.0)


@pytest.mark.parametrize("settle", ["ack", "dead"])
async def test_a_delayed_member_promoted_by_a_finished_head_waits_for_its_time(
    broker: Broker, clock: FakeClock, settle: str
) -> None:
    await broker.create_queue("q")
    await broker.enqueue("q", b"head", group="g")
    later = await broker.enqueue("q", b"later", group="g", delay=30)
    session = await broker.open_session("c", timeout=1000)
    [head] = await broker.receive(session, "q")
    if settle == "ack":
        await broker.ack(head.id, head.token)
    else:
        await broker.dead(head.id, head.token, "bad")
    stats = await broker.stats("q")
    assert (stats.ready, stats.scheduled) == (0, 1)
    assert await broker.receive(session, "q") == []
    clock.advance(30)
    [d] = await broker.receive(session, "q")
    assert d.id == later.id


async def test_a_group_head_dead_at_its_lease_s_expiry_lets_the_next_lead(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q", max_attempts=1, visibility_timeout=5)
    await broker.enqueue_many(
        "q", [NewMessage(body=b"1", group="g"), NewMessage(body=b"2", group="g")]
    )
    session = await broker.open_session("c", timeout=1000)
    [head] = await broker.receive(session, "q")
    clock.advance(6)
    assert (await broker.sweep_once()).finished == [head.id]
    [d] = await broker.receive(session, "q")
    assert d.body == b"2"


async def test_a_nack_that_dead_letters_does_not_stop_the_rest_of_its_batch(
    broker: Broker,
) -> None:
    await broker.create_queue("q", max_attempts=5)
    await broker.enqueue("q", b"last", max_attempts=1)
    again = await broker.enqueue("q", b"again")
    session = await broker.open_session("c")
    last, other = await broker.receive(session, "q", max=2)
    out = await broker.nack_many([Nack(last.id, last.token), Nack(other.id, other.token, delay=0)])
    assert out == [None, None]
    stats = await broker.stats("q")
    assert (stats.ready, stats.leased, stats.dead) == (1, 0, 1)
    [d] = await broker.receive(session, "q")
    assert (d.id, d.attempts) == (again.id, 2)


async def test_a_nack_with_a_short_delay_is_not_delivered_before_it(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q")
    await broker.enqueue("q", b"x")
    session = await broker.open_session("c", timeout=1000)
    [d] = await broker.receive(session, "q")
    await broker.nack(d.id, d.token, delay=0.5)
    assert (await broker.stats("q")).scheduled == 1
    assert await broker.receive(session, "q") == []
    clock.advance(0.5)
    assert len(await broker.receive(session, "q")) == 1


async def test_a_dead_letter_s_result_lasts_the_queue_s_result_ttl(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q", result_ttl=10)
    sent = await broker.enqueue("q", b"x")
    session = await broker.open_session("c", timeout=1000)
    [d] = await broker.receive(session, "q")
    await broker.dead(d.id, d.token, "bad")
    clock.advance(9)
    await broker.sweep_once()
    assert (await broker.result(sent.id)).status == ResultStatus.DEAD
    clock.advance(2)
    await broker.sweep_once()
    with pytest.raises(ResultTimeout):
        await broker.result(sent.id)


async def test_a_dedup_window_under_a_second_still_dedups(broker: Broker, clock: FakeClock) -> None:
    await broker.create_queue("q", dedup_window=0.5)
    first = await broker.enqueue("q", b"a", dedup_key="k")
    clock.advance(0.25)
    second = await broker.enqueue("q", b"b", dedup_key="k")
    assert (second.id, second.duplicate) == (first.id, True)
    clock.advance(0.25)
    assert not (await broker.enqueue("q", b"c", dedup_key="k")).duplicate


async def test_acks_of_one_session_in_one_batch_all_count(broker: Broker) -> None:
    a, b = await two_leased(broker)
    assert await broker.ack_many([Ack(a.id, a.token), Ack(b.id, b.token)]) == [None, None]
    [info] = await broker.sessions()
    assert (info.delivered_total, info.acked_total) == (2, 2)


async def test_queue_full_and_session_not_found_say_what_was_refused(broker: Broker) -> None:
    await broker.create_queue("q", max_length=2)
    await broker.enqueue_many("q", [NewMessage(body=b"a"), NewMessage(body=b"b")])
    with pytest.raises(QueueFull) as full:
        await broker.enqueue("q", b"c")
    assert "queue 'q' holds 2 of at most 2 messages; 1 more do not fit" in full.value.message
    session = await broker.open_session("c")
    await broker.close_session(session)
    with pytest.raises(SessionNotFound) as gone:
        await broker.receive(session, "q")
    assert f"session {session!r} is closed or expired" in gone.value.message


async def test_acked_and_dead_messages_make_room_under_max_length(broker: Broker) -> None:
    await broker.create_queue("q", max_length=3)
    await broker.enqueue_many("q", [NewMessage(body=b"%d" % n) for n in range(3)])
    session = await broker.open_session("c")
    first, second = await broker.receive(session, "q", max=2)
    await broker.ack(first.id, first.token)
    await broker.dead(second.id, second.token, "bad")
    await broker.enqueue_many("q", [NewMessage(body=b"3"), NewMessage(body=b"4")])
    with pytest.raises(QueueFull):
        await broker.enqueue("q", b"5")
    assert (await broker.stats("q")).ready == 3


async def test_a_closed_session_no_longer_counts_as_a_consumer(broker: Broker) -> None:
    await broker.create_queue("q")
    session = await broker.open_session("c")
    await broker.receive(session, "q")
    assert (await broker.stats("q")).consumers == 1
    await broker.close_session(session)
    assert (await broker.stats("q")).consumers == 0


async def test_nul_characters_in_errors_and_reasons_are_kept_readable(broker: Broker) -> None:
    await broker.create_queue("q", max_attempts=1)
    await broker.enqueue_many("q", [NewMessage(body=b"a"), NewMessage(body=b"b")])
    session = await broker.open_session("c")
    first, second = await broker.receive(session, "q", max=2)
    await broker.nack(first.id, first.token, error="bad\x00byte")
    await broker.dead(second.id, second.token, "nul\x00here")
    letters = {m.id: m for m in await broker.dead_letters("q")}
    error, reason = letters[first.id].last_error or "", letters[second.id].dead_reason or ""
    assert error.startswith("bad") and error.endswith("byte") and len(error) == 8
    assert reason.startswith("nul") and reason.endswith("here") and len(reason) == 8


async def test_a_long_poll_on_an_empty_queue_does_not_ask_the_store_in_a_loop(
    broker: Broker,
) -> None:
    """Waiting, the broker claims again when woken, or once a second at most:
    a handful of claims in 0.3 s, not a spin."""
    await broker.create_queue("q")
    session = await broker.open_session("c")
    claims = 0
    claim = broker.store.claim

    async def counted(op: object) -> object:
        nonlocal claims
        claims += 1
        return await claim(op)  # type: ignore[arg-type]

    broker.store.claim = counted  # type: ignore[method-assign]
    assert await broker.receive(session, "q", wait=0.3) == []
    assert 1 <= claims <= 5, claims


async def test_an_id_tells_the_millisecond_it_was_made(broker: Broker, clock: FakeClock) -> None:
    """Ids are time-ordered (docs/semantics.md): the broker clock's
    millisecond at the enqueue, whatever store made them."""
    await broker.create_queue("q")
    first = await broker.enqueue("q", b"a")
    assert id_time(first.id) == int(clock.now * 1000) / 1000
    clock.advance(10)
    later = await broker.enqueue_many("q", [NewMessage(body=b"b"), NewMessage(body=b"c")])
    assert [id_time(r.id) for r in later] == [int(clock.now * 1000) / 1000] * 2
    assert first.id < later[0].id < later[1].id


async def test_one_idempotency_key_twice_at_once_stores_once(broker: Broker) -> None:
    """Two calls with one key at the same moment (on PostgreSQL, one
    group-commit round): one reply for both, one message stored."""
    await broker.create_queue("q")
    await broker.enqueue("q", b"warm")  # the queue's settings cached: no await before the store
    batch = [NewMessage(body=b"a"), NewMessage(body=b"b")]
    first, second = await asyncio.gather(
        broker.enqueue_many("q", batch, idempotency_key="k"),
        broker.enqueue_many("q", batch, idempotency_key="k"),
    )
    assert first == second and len(first) == 2
    assert (await broker.stats("q")).enqueued_total == 3


async def test_enqueues_at_the_same_moment_are_all_stored_groups_in_order(
    broker: Broker,
) -> None:
    """On PostgreSQL they share a group-commit round: each one's rows must
    reach the round's single INSERT."""
    await broker.create_queue("q")
    await broker.enqueue("q", b"warm")
    sent = await asyncio.gather(
        *(broker.enqueue("q", b"%d" % n, group="g" if n % 2 else None) for n in range(6))
    )
    assert len({r.id for r in sent}) == 6
    stats = await broker.stats("q")
    assert (stats.enqueued_total, stats.ready) == (7, 7)
    session = await broker.open_session("c")
    got = await broker.receive(session, "q", max=100)
    assert sorted(d.body for d in got) == [b"0", b"1", b"2", b"4", b"warm"]


async def test_publish_dedups_in_each_queue_by_its_own_window(broker: Broker) -> None:
    """The first bound queue keeps no dedup keys: the second still does."""
    await broker.create_queue("a", dedup_window=0)
    await broker.create_queue("b")
    await broker.bind("t", "a")
    await broker.bind("t", "b")
    first = await broker.publish("t", b"x", dedup_key="k")
    again = await broker.publish("t", b"x", dedup_key="k")
    assert not again["a"].duplicate and again["a"].id != first["a"].id
    assert again["b"].duplicate and again["b"].id == first["b"].id
