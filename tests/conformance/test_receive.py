"""Receiving: max, and long-polling with wait (docs/semantics.md, "Delivery").

A long poll waits in real time whatever the broker's clock says. A waiting
receive also looks again on its own now and then (``recheck_interval``, for
changes made on other nodes), and once more when its wait ends. Here the
re-check is an hour and the waits a minute, so a waiting receive that gets
its message within PATIENCE (far less) was woken by the change."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import pytest

from conveyor.broker.broker import Broker, BrokerConfig
from conveyor.core.types import Delivery, NewMessage
from conveyor.store.base import ClaimOp, ClaimResult

if TYPE_CHECKING:
    from conftest import FakeClock

RECHECK = 3600.0  # the broker's own re-check: never within a test
WAIT = 60.0  # a waiting receive's wait: it looks again when it ends, long after PATIENCE
PATIENCE = 20.0  # what only a missing wake-up reaches


@pytest.fixture
def broker_config() -> BrokerConfig:
    return BrokerConfig(max_body=64 * 1024, recheck_interval=RECHECK)


async def started(
    broker: Broker, sessions: list[str], *, max: int = 5
) -> list[asyncio.Task[list[Delivery]]]:
    """Receives (one per session) that have each claimed, found nothing and
    wait now: whatever they get after this, a wake-up brought."""
    empty = asyncio.Semaphore(0)
    claim = broker.store.claim

    async def watched(op: ClaimOp) -> ClaimResult:
        result = await claim(op)
        if not result.deliveries:
            empty.release()
        return result

    broker.store.claim = watched  # type: ignore[method-assign]
    try:
        tasks = [asyncio.create_task(broker.receive(s, "q", max=max, wait=WAIT)) for s in sessions]
        for _ in sessions:
            await asyncio.wait_for(empty.acquire(), PATIENCE)
    finally:
        broker.store.claim = claim  # type: ignore[method-assign]
    assert not any(t.done() for t in tasks)
    return tasks


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
    # A lower bound, kept on purpose: the receive waited the time it asked
    # for (a loaded machine only makes that longer).
    assert loop.time() - began >= 0.29


async def test_a_waiting_receive_wakes_on_enqueue(broker: Broker) -> None:
    await broker.create_queue("q")
    session = await broker.open_session("c")
    [waiting] = await started(broker, [session])
    sent = await broker.enqueue("q", b"hello")
    got = await asyncio.wait_for(waiting, PATIENCE)
    assert [d.id for d in got] == [sent.id]


async def test_each_waiting_receive_gets_its_own_message(broker: Broker) -> None:
    await broker.create_queue("q")
    sessions = [await broker.open_session(f"c{n}") for n in range(4)]
    # Four wait, three messages come: three are woken, one waits on.
    waiting = await started(broker, sessions, max=1)
    await broker.enqueue_many("q", [NewMessage(body=b"%d" % n) for n in range(3)])
    done: set[asyncio.Task[list[Delivery]]] = set()
    pending = set(waiting)
    while len(done) < 3:
        more, pending = await asyncio.wait(
            pending, timeout=PATIENCE, return_when=asyncio.FIRST_COMPLETED
        )
        assert more, "a waiting receive was not woken"
        done |= more
    ids = [d.id for task in done for d in task.result()]
    assert len(ids) == len(set(ids)) == 3
    [left] = pending  # nothing is left for it: it is still waiting
    left.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await left


async def test_a_waiting_receive_wakes_when_a_message_comes_back(broker: Broker) -> None:
    await broker.create_queue("q")
    await broker.enqueue("q", b"x")
    holder, waiter = await broker.open_session("holder"), await broker.open_session("waiter")
    [d] = await broker.receive(holder, "q")

    [waiting] = await started(broker, [waiter])
    await broker.nack(d.id, d.token, delay=0)
    [back] = await asyncio.wait_for(waiting, PATIENCE)
    assert back.id == d.id

    [waiting] = await started(broker, [holder])
    await broker.close_session(waiter)  # its lease is released at once
    [again] = await asyncio.wait_for(waiting, PATIENCE)
    assert again.id == d.id


async def test_a_waiting_receive_wakes_when_its_group_moves_on(broker: Broker) -> None:
    await broker.create_queue("q")
    await broker.enqueue("q", b"g1", group="g")
    await broker.enqueue("q", b"g2", group="g")
    session = await broker.open_session("c")
    [g1] = await broker.receive(session, "q")
    [waiting] = await started(broker, [session])
    await broker.ack(g1.id, g1.token)
    [g2] = await asyncio.wait_for(waiting, PATIENCE)
    assert g2.body == b"g2"


def count_claims(broker: Broker) -> list[int]:
    """Count the claims the broker makes of its store from now on."""
    calls = [0]
    claim = broker.store.claim

    async def counted(op: ClaimOp) -> ClaimResult:
        calls[0] += 1
        return await claim(op)

    broker.store.claim = counted  # type: ignore[method-assign]
    return calls


@pytest.mark.stores("sqlite-file", "sqlite-memory")
async def test_a_receive_after_a_short_one_waits_without_claiming_again(
    broker: Broker, clock: FakeClock
) -> None:
    """A consumer that just drained the queue does not ask the store again
    until something changed: the cost of an idle consumer is its waiting.
    Not on a shared store, whose other nodes' changes are heard of late."""
    assert not broker.store.capabilities.shared
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
    clock.advance(RECHECK)  # a short claim is trusted for the re-check interval at most
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
