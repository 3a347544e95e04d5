"""Group order at the edges the state machine found (docs/semantics.md,
"Groups" and "Failure, retries and dead letters"): several members of a
group dying in one sweep, and dead letters of one group redriven together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.broker.broker import Broker
from conveyor.core.types import NewMessage

if TYPE_CHECKING:
    from conftest import FakeClock


async def test_a_head_and_the_next_expiring_in_one_sweep_let_the_third_lead(
    broker: Broker, clock: FakeClock
) -> None:
    """The head dies first and promotes the next, which dies too in the same
    sweep: the third must lead then, not wait behind nobody."""
    await broker.create_queue("q")
    await broker.enqueue_many(
        "q",
        [
            NewMessage(body=b"g1", group="g", ttl=2),
            NewMessage(body=b"g2", group="g", ttl=3),
            NewMessage(body=b"g3", group="g"),
            NewMessage(body=b"g4", group="g"),
        ],
    )
    clock.advance(5)
    assert (await broker.sweep_once()).messages_expired == 2
    stats = await broker.stats("q")
    assert (stats.ready, stats.scheduled, stats.dead, stats.expired_total) == (2, 0, 2, 2)
    session = await broker.open_session("c")
    [g3] = await broker.receive(session, "q", max=10)
    assert g3.body == b"g3"
    await broker.ack(g3.id, g3.token)
    [g4] = await broker.receive(session, "q", max=10)
    assert g4.body == b"g4"
    assert [m.body for m in await broker.dead_letters("q")] == [b"g1", b"g2"]


async def test_dead_letters_of_a_group_redriven_by_id_lead_in_enqueue_order(
    broker: Broker,
) -> None:
    """Ids in reverse order and one of them twice: each is redriven once, and
    the first enqueued leads."""
    await broker.create_queue("q")
    sent = await broker.enqueue_many("q", [NewMessage(body=b"%d" % n, group="g") for n in (1, 2)])
    session = await broker.open_session("c")
    for _ in sent:
        [d] = await broker.receive(session, "q", max=10)
        await broker.dead(d.id, d.token, "bad")
    first, second = (r.id for r in sent)
    assert await broker.redrive("q", [second, first, second]) == 2
    stats = await broker.stats("q")
    assert (stats.ready, stats.dead) == (2, 0)
    [lead] = await broker.receive(session, "q", max=10)
    assert lead.id == first
    await broker.ack(lead.id, lead.token)
    [then] = await broker.receive(session, "q", max=10)
    assert then.id == second
    await broker.ack(then.id, then.token)
    stats = await broker.stats("q")
    assert (stats.ready, stats.leased, stats.dead) == (0, 0, 0)


async def test_a_redriven_member_waits_behind_the_group_s_head(broker: Broker) -> None:
    await broker.create_queue("q")
    sent = await broker.enqueue_many(
        "q", [NewMessage(body=b"%d" % n, group="g") for n in (1, 2, 3)]
    )
    session = await broker.open_session("c")
    [one] = await broker.receive(session, "q", max=10)
    await broker.dead(one.id, one.token, "bad")
    [two] = await broker.receive(session, "q", max=10)
    assert await broker.redrive("q") == 1  # "1" again, while "2" is out
    assert await broker.receive(session, "q", max=10) == []
    await broker.ack(two.id, two.token)
    [again] = await broker.receive(session, "q", max=10)
    assert again.id == sent[0].id  # before "3", enqueued after it
