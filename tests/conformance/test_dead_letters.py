"""Dead letters: listing and redrive (docs/semantics.md, "Failure, retries
and dead letters")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.broker.broker import Broker
from conveyor.core.types import MessageState, NewMessage

if TYPE_CHECKING:
    from conftest import FakeClock


async def kill_all(broker: Broker, session: str, reason: str = "bad") -> list[str]:
    got = await broker.receive(session, "q", max=100)
    for d in got:
        await broker.dead(d.id, d.token, f"{reason} {d.body.decode()}")
    return [d.id for d in got]


async def test_dead_letters_are_listed_oldest_first_page_by_page(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q")
    sent = await broker.enqueue_many(
        "q", [NewMessage(body=b"%d" % n, headers={"n": str(n)}) for n in range(7)]
    )
    session = await broker.open_session("c")
    await kill_all(broker, session)
    ids = [r.id for r in sent]
    everything = await broker.dead_letters("q")
    assert [m.id for m in everything] == ids
    pages, after = [], None
    while page := await broker.dead_letters("q", limit=3, after=after):
        pages.append([m.id for m in page])
        after = page[-1].id
    assert pages == [ids[0:3], ids[3:6], ids[6:7]]
    third = everything[2]
    assert (third.queue, third.state, third.body, third.headers) == (
        "q",
        MessageState.DEAD,
        b"2",
        {"n": "2"},
    )
    assert (third.dead_reason, third.attempts, third.dead_at) == ("bad 2", 1, clock.now)
    assert await broker.dead_letters("q", after=ids[-1]) == []


async def test_redrive_makes_every_dead_letter_ready_with_attempts_reset(
    broker: Broker,
) -> None:
    await broker.create_queue("q", max_attempts=2)
    await broker.enqueue_many("q", [NewMessage(body=b"%d" % n) for n in range(3)])
    session = await broker.open_session("c")
    for _ in range(2):
        for d in await broker.receive(session, "q", max=10):
            await broker.nack(d.id, d.token, delay=0, error="flaky")
    assert (await broker.stats("q")).dead == 3
    assert await broker.redrive("q") == 3
    stats = await broker.stats("q")
    assert (stats.ready, stats.dead) == (3, 0)
    assert await broker.dead_letters("q") == []
    again = await broker.receive(session, "q", max=10)
    assert [d.body for d in again] == [b"0", b"1", b"2"]
    assert {d.attempts for d in again} == {1}
    # Attempts start over: it takes max_attempts failures to dead-letter again.
    for d in again:
        await broker.nack(d.id, d.token, delay=0)
    assert (await broker.stats("q")).dead == 0
    assert await broker.redrive("q") == 0


async def test_redrive_by_id_moves_only_those(broker: Broker) -> None:
    await broker.create_queue("q")
    await broker.enqueue_many("q", [NewMessage(body=b"%d" % n) for n in range(4)])
    ready = await broker.enqueue("q", b"never died", priority=9)
    session = await broker.open_session("c")
    [alive] = await broker.receive(session, "q")
    assert alive.id == ready.id
    dead = await kill_all(broker, session)
    assert len(dead) == 4
    # A leased message, an id that never existed: nothing to redrive.
    assert await broker.redrive("q", [dead[1], dead[3], ready.id, "00000000000000ff"]) == 2
    assert [m.id for m in await broker.dead_letters("q")] == [dead[0], dead[2]]
    got = await broker.receive(session, "q", max=10)
    assert [d.id for d in got] == [dead[1], dead[3]]
    assert await broker.redrive("q", []) == 0


async def test_a_redriven_group_member_waits_for_its_group(broker: Broker) -> None:
    await broker.create_queue("q")
    await broker.enqueue("q", b"g1", group="g")
    await broker.enqueue("q", b"g2", group="g")
    session = await broker.open_session("c")
    [g1] = await broker.receive(session, "q", max=10)
    await broker.dead(g1.id, g1.token, "poison")
    [g2] = await broker.receive(session, "q", max=10)
    assert g2.body == b"g2"
    assert await broker.redrive("q") == 1
    assert await broker.receive(session, "q", max=10) == []  # g2 is still in flight
    await broker.ack(g2.id, g2.token)
    [back] = await broker.receive(session, "q", max=10)
    assert back.id == g1.id


async def test_dead_letters_stay_until_redriven(broker: Broker, clock: FakeClock) -> None:
    await broker.create_queue("q", result_ttl=10)
    await broker.enqueue("q", b"x")
    session = await broker.open_session("c", timeout=1000)
    await kill_all(broker, session)
    await broker.purge("q")
    clock.advance(86400 * 30)
    await broker.sweep_once()
    assert len(await broker.dead_letters("q")) == 1
    assert (await broker.stats("q")).dead == 1
