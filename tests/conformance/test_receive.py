"""Receiving: max, and long-polling with wait (docs/semantics.md, "Delivery").

A long poll waits in real time whatever the broker's clock says, so these
tests wait a fraction of a second at most. A waiting receive also looks again
on its own about once a second (for changes made on other nodes); a wake-up
must come well before that."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from conveyor.broker.broker import Broker
from conveyor.core.types import Delivery, NewMessage
from conveyor.store.base import ClaimOp, ClaimResult

if TYPE_CHECKING:
    from conftest import FakeClock

WOKEN_WITHIN = 0.5  # seconds: well under the waiting receive's own 1 s re-check


async def started(broker: Broker, session: str, wait: float) -> asyncio.Task[list[Delivery]]:
    task = asyncio.create_task(broker.receive(session, "q", max=5, wait=wait))
    await asyncio.sleep(0.02)  # it is waiting now
    assert not task.done()
    return task


async def test_receive_returns_up_to_max_at_once(broker: Broker) -> None:
    await broker.create_queue("q")
    await broker.enqueue_many("q", [NewMessage(body=b"%d" % n) for n in range(5)])
    session = await broker.open_session("c")
    assert len(await broker.receive(session, "q", max=3)) == 3
    assert len(await broker.receive(session, "q", max=3, wait=5)) == 2  # no waiting for more
    assert await broker.receive(session, "q", max=3) == []


async def test_a_waiting_receive_times_out_empty(broker: Broker) -> None:
    await broker.create_queue("q")
    session = await broker.open_session("c")
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await broker.receive(session, "q", wait=0.3) == []
    assert loop.time() - began >= 0.29


async def test_a_waiting_receive_wakes_on_enqueue(broker: Broker) -> None:
    await broker.create_queue("q")
    session = await broker.open_session("c")
    waiting = await started(broker, session, wait=10)
    loop = asyncio.get_running_loop()
    began = loop.time()
    sent = await broker.enqueue("q", b"hello")
    got = await asyncio.wait_for(waiting, 5)
    assert [d.id for d in got] == [sent.id]
    assert loop.time() - began < WOKEN_WITHIN


async def test_each_waiting_receive_gets_its_own_message(broker: Broker) -> None:
    await broker.create_queue("q")
    sessions = [await broker.open_session(f"c{n}") for n in range(4)]
    # Four wait, three messages come: one of them times out.
    waiting = [asyncio.create_task(broker.receive(s, "q", max=1, wait=0.6)) for s in sessions]
    await asyncio.sleep(0.02)
    await broker.enqueue_many("q", [NewMessage(body=b"%d" % n) for n in range(3)])
    results = await asyncio.wait_for(asyncio.gather(*waiting), 5)
    ids = [d.id for got in results for d in got]
    assert len(ids) == len(set(ids)) == 3


async def test_a_waiting_receive_wakes_when_a_message_comes_back(broker: Broker) -> None:
    await broker.create_queue("q")
    await broker.enqueue("q", b"x")
    holder, waiter = await broker.open_session("holder"), await broker.open_session("waiter")
    [d] = await broker.receive(holder, "q")
    loop = asyncio.get_running_loop()

    waiting = await started(broker, waiter, wait=10)
    began = loop.time()
    await broker.nack(d.id, d.token, delay=0)
    [back] = await asyncio.wait_for(waiting, 5)
    assert back.id == d.id and loop.time() - began < WOKEN_WITHIN

    waiting = await started(broker, holder, wait=10)
    began = loop.time()
    await broker.close_session(waiter)  # its lease is released at once
    [again] = await asyncio.wait_for(waiting, 5)
    assert again.id == d.id and loop.time() - began < WOKEN_WITHIN


async def test_a_waiting_receive_wakes_when_its_group_moves_on(broker: Broker) -> None:
    await broker.create_queue("q")
    await broker.enqueue("q", b"g1", group="g")
    await broker.enqueue("q", b"g2", group="g")
    session = await broker.open_session("c")
    [g1] = await broker.receive(session, "q")
    waiting = await started(broker, session, wait=10)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await broker.ack(g1.id, g1.token)
    [g2] = await asyncio.wait_for(waiting, 5)
    assert g2.body == b"g2" and loop.time() - began < WOKEN_WITHIN


def count_claims(broker: Broker) -> list[int]:
    """Count the claims the broker makes of its store from now on."""
    calls = [0]
    claim = broker.store.claim

    async def counted(op: ClaimOp) -> ClaimResult:
        calls[0] += 1
        return await claim(op)

    broker.store.claim = counted  # type: ignore[method-assign]
    return calls


async def test_a_receive_after_a_short_one_waits_without_claiming_again(
    broker: Broker, clock: FakeClock
) -> None:
    """A consumer that just drained the queue does not ask the store again
    until something changed: the cost of an idle consumer is its waiting.
    Not on a shared store, whose other nodes' changes are heard of late."""
    if broker.store.capabilities.shared:
        pytest.skip("every receive asks a shared store: other nodes change it unheard of")
    await broker.create_queue("q")
    await broker.enqueue("q", b"x")
    session = await broker.open_session("c", timeout=1000)
    claims = count_claims(broker)
    [d] = await broker.receive(session, "q", max=5)
    assert claims == [1]
    assert await broker.receive(session, "q", max=5) == []
    assert await broker.receive(session, "q", max=5, wait=0.05) == []
    assert claims == [1]
    await broker.ack(d.id, d.token)  # an ack makes nothing claimable in a plain queue
    assert await broker.receive(session, "q", max=5) == []
    assert claims == [1]
    clock.advance(1)  # a short claim is trusted for a second at most
    assert await broker.receive(session, "q", max=5) == []
    assert claims == [2]
    await broker.enqueue("q", b"y")
    [y] = await broker.receive(session, "q", max=5)
    assert y.body == b"y" and claims == [3]


async def test_every_change_of_a_drained_queue_is_seen_by_the_next_receive(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q", retry_base=5, retry_jitter=0)
    session = await broker.open_session("c", timeout=1000)
    other = await broker.open_session("other", timeout=1000)
    assert await broker.receive(session, "q", max=5) == []

    await broker.enqueue("q", b"later", delay=3)  # a delayed message
    assert await broker.receive(session, "q", max=5) == []
    clock.advance(3)
    [later] = await broker.receive(session, "q", max=5)

    await broker.nack(later.id, later.token)  # backoff 5 s: scheduled again
    assert await broker.receive(session, "q", max=5) == []
    clock.advance(5)
    [again] = await broker.receive(session, "q", max=5)
    assert again.id == later.id

    await broker.enqueue("q", b"held")
    [held] = await broker.receive(other, "q", max=5)
    assert await broker.receive(session, "q", max=5) == []
    await broker.close_session(other)  # its lease is released
    [back] = await broker.receive(session, "q", max=5)
    assert back.id == held.id

    await broker.redrive("q")  # nothing dead: no change
    await broker.dead(back.id, back.token, "poison")
    assert await broker.receive(session, "q", max=5) == []
    assert await broker.redrive("q") == 1
    [redriven] = await broker.receive(session, "q", max=5)
    assert redriven.id == back.id
