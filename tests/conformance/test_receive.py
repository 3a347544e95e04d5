"""Receiving: max, and long-polling with wait (docs/semantics.md, "Delivery").

A long poll waits in real time whatever the broker's clock says, so these
tests wait a fraction of a second at most. A waiting receive also looks again
on its own about once a second (for changes made on other nodes); a wake-up
must come well before that."""

from __future__ import annotations

import asyncio

from conveyor.broker.broker import Broker
from conveyor.core.types import Delivery, NewMessage

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
