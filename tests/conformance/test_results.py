"""Results: ack with a result, wait for it by id (docs/semantics.md, "Results")."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from conveyor.broker.broker import Broker
from conveyor.core.errors import BodyTooLarge, ResultTimeout
from conveyor.core.types import Result, ResultStatus

if TYPE_CHECKING:
    from conftest import FakeClock


async def test_an_ack_s_result_is_returned_by_id(broker: Broker, clock: FakeClock) -> None:
    await broker.create_queue("q")
    sent = await broker.enqueue("q", b"2+2")
    session = await broker.open_session("c")
    [d] = await broker.receive(session, "q")
    clock.advance(3)
    await broker.ack(d.id, d.token, result=b"4")
    assert await broker.result(sent.id) == Result(
        id=sent.id, status=ResultStatus.OK, body=b"4", error=None, finished_at=clock.now
    )


async def test_a_waiting_producer_gets_the_result_when_it_comes(broker: Broker) -> None:
    await broker.create_queue("q")
    sent = await broker.enqueue("q", b"job")
    session = await broker.open_session("c")
    waiting = asyncio.create_task(broker.result(sent.id, timeout=30))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    [d] = await broker.receive(session, "q")
    await broker.ack(d.id, d.token, result=b"done")
    result = await asyncio.wait_for(waiting, 10)
    assert (result.status, result.body) == (ResultStatus.OK, b"done")


async def test_no_result_within_the_timeout_raises_result_timeout(broker: Broker) -> None:
    await broker.create_queue("q")
    sent = await broker.enqueue("q", b"job")
    session = await broker.open_session("c")
    [d] = await broker.receive(session, "q")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ResultTimeout) as caught:
        await broker.result(sent.id, timeout=0.2)
    assert caught.value.code == "result_timeout"
    # A lower bound, kept: it waited the time asked (load only makes that longer).
    assert loop.time() - started >= 0.19
    with pytest.raises(ResultTimeout):
        await broker.result(sent.id)  # timeout 0: look once
    with pytest.raises(ResultTimeout):
        await broker.result("00000000000000aa")  # no such message
    await broker.ack(d.id, d.token, result=b"late")
    assert (await broker.result(sent.id)).body == b"late"


async def test_a_dead_lettered_message_has_a_dead_result(broker: Broker) -> None:
    await broker.create_queue("q", max_attempts=1)
    poisoned = await broker.enqueue("q", b"a")
    failing = await broker.enqueue("q", b"b")
    session = await broker.open_session("c")
    first, second = await broker.receive(session, "q", max=2)
    await broker.dead(first.id, first.token, "cannot parse")
    await broker.nack(second.id, second.token, error="ValueError: boom")
    dead = await broker.result(poisoned.id)
    assert (dead.status, dead.body) == (ResultStatus.DEAD, None)
    assert "cannot parse" in (dead.error or "")
    failed = await broker.result(failing.id)
    assert failed.status == ResultStatus.DEAD
    assert "ValueError: boom" in (failed.error or "")


async def test_a_waiting_producer_learns_of_a_dead_letter(broker: Broker) -> None:
    await broker.create_queue("q")
    sent = await broker.enqueue("q", b"job")
    session = await broker.open_session("c")
    waiting = asyncio.create_task(broker.result(sent.id, timeout=30))
    await asyncio.sleep(0.01)
    [d] = await broker.receive(session, "q")
    await broker.dead(d.id, d.token, "rejected")
    result = await asyncio.wait_for(waiting, 10)
    assert result.status == ResultStatus.DEAD


async def test_results_are_kept_for_the_queue_s_result_ttl(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q", result_ttl=60)
    sent = await broker.enqueue("q", b"job")
    session = await broker.open_session("c", timeout=1000)
    [d] = await broker.receive(session, "q")
    await broker.ack(d.id, d.token, result=b"r")
    clock.advance(59)
    await broker.sweep_once()
    assert (await broker.result(sent.id)).body == b"r"
    clock.advance(2)
    await broker.sweep_once()
    with pytest.raises(ResultTimeout):
        await broker.result(sent.id)


async def test_a_result_over_the_body_limit_is_refused_and_the_lease_kept(
    broker: Broker,
) -> None:
    await broker.create_queue("q")
    sent = await broker.enqueue("q", b"job")
    session = await broker.open_session("c")
    [d] = await broker.receive(session, "q")
    with pytest.raises(BodyTooLarge) as caught:
        await broker.ack(d.id, d.token, result=b"x" * (broker.config.max_body + 1))
    assert caught.value.code == "body_too_large"
    assert (await broker.stats("q")).leased == 1
    await broker.ack(d.id, d.token, result=b"x" * broker.config.max_body)
    assert (await broker.result(sent.id)).body == b"x" * broker.config.max_body
