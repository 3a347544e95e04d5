"""Consumer sessions and heartbeats (docs/semantics.md, "Sessions and
heartbeats"), and per-session statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from conveyor.broker.broker import Broker
from conveyor.core.errors import SessionNotFound
from conveyor.core.types import NewMessage, SessionInfo

if TYPE_CHECKING:
    from conftest import FakeClock


async def info(broker: Broker, session: str) -> SessionInfo:
    found = [s for s in await broker.sessions() if s.id == session]
    assert len(found) == 1, f"session {session} not listed"
    return found[0]


async def assert_gone(broker: Broker, session: str) -> None:
    assert session not in {s.id for s in await broker.sessions()}
    with pytest.raises(SessionNotFound) as caught:
        await broker.heartbeat(session)
    assert caught.value.code == "session_not_found"
    with pytest.raises(SessionNotFound):
        await broker.receive(session, "q")


async def test_a_session_is_listed_with_what_it_holds_and_did(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q")
    await broker.create_queue("other")
    started = clock.now
    session = await broker.open_session("worker-1", capacity=4, timeout=20)
    listed = await info(broker, session)
    assert (listed.name, listed.capacity, listed.timeout) == ("worker-1", 4, 20)
    assert (listed.created_at, listed.last_seen) == (started, started)
    assert (listed.queues, listed.leases, listed.delivered_total, listed.acked_total) == (
        [],
        0,
        0,
        0,
    )
    await broker.enqueue_many("q", [NewMessage(body=b"%d" % n) for n in range(3)])
    clock.advance(5)
    got = await broker.receive(session, "q", max=3)
    await broker.receive(session, "other")
    await broker.ack(got[0].id, got[0].token)
    listed = await info(broker, session)
    assert listed.queues == ["other", "q"]
    assert (listed.leases, listed.delivered_total, listed.acked_total) == (2, 3, 1)
    assert listed.last_seen == clock.now
    default = await broker.open_session()
    assert (await info(broker, default)).timeout == broker.config.session_timeout
    assert len({s.id for s in await broker.sessions()}) == 2


async def test_closing_a_session_releases_its_leases_at_once(broker: Broker) -> None:
    await broker.create_queue("q", visibility_timeout=3600)
    await broker.enqueue_many("q", [NewMessage(body=b"%d" % n) for n in range(3)])
    leaving, staying = await broker.open_session("leaving"), await broker.open_session("staying")
    held = await broker.receive(leaving, "q", max=3)
    assert await broker.receive(staying, "q", max=3) == []
    await broker.close_session(leaving)
    stats = await broker.stats("q")
    assert (stats.ready, stats.leased) == (3, 0)
    again = await broker.receive(staying, "q", max=3)
    assert [d.id for d in again] == [d.id for d in held]
    assert all(b.token > a.token for a, b in zip(held, again, strict=True))
    await assert_gone(broker, leaving)
    await broker.close_session(leaving)  # closing again is harmless


async def test_a_silent_session_is_expired_by_the_monitor(broker: Broker, clock: FakeClock) -> None:
    await broker.create_queue("q", visibility_timeout=3600)
    await broker.enqueue_many("q", [NewMessage(body=b"%d" % n) for n in range(2)])
    silent = await broker.open_session("silent", timeout=10)
    held = await broker.receive(silent, "q", max=2)
    clock.advance(9.5)
    other = await broker.open_session("other", timeout=100)
    swept = await broker.sweep_once()
    assert swept.sessions_expired == []
    assert (await broker.stats("q")).leased == 2
    clock.advance(1)
    swept = await broker.sweep_once()
    assert swept.sessions_expired == [silent]
    assert "q" in swept.woken
    stats = await broker.stats("q")
    assert (stats.ready, stats.leased) == (2, 0)
    again = await broker.receive(other, "q", max=2)
    assert {d.id for d in again} == {d.id for d in held}
    await assert_gone(broker, silent)


async def test_heartbeats_keep_a_session_and_its_leases_alive(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q", visibility_timeout=3600)
    await broker.enqueue("q", b"x")
    session = await broker.open_session("beating", timeout=10)
    [held] = await broker.receive(session, "q")
    for _ in range(10):
        clock.advance(6)
        await broker.heartbeat(session)
        assert (await broker.sweep_once()).sessions_expired == []
    assert (await info(broker, session)).last_seen == clock.now
    assert (await broker.stats("q")).leased == 1
    await broker.ack(held.id, held.token)


async def test_receiving_counts_as_a_heartbeat(broker: Broker, clock: FakeClock) -> None:
    await broker.create_queue("q", visibility_timeout=3600)
    await broker.enqueue("q", b"x")
    session = await broker.open_session("polling", timeout=10)
    [held] = await broker.receive(session, "q")
    for _ in range(10):
        clock.advance(6)
        assert await broker.receive(session, "q") == []  # an empty receive counts too
        assert (await broker.sweep_once()).sessions_expired == []
    assert (await broker.stats("q")).leased == 1
    await broker.ack(held.id, held.token)


async def test_an_unknown_session_is_not_found(broker: Broker) -> None:
    await broker.create_queue("q")
    with pytest.raises(SessionNotFound):
        await broker.heartbeat("0123456789abcdef")
    with pytest.raises(SessionNotFound):
        await broker.receive("0123456789abcdef", "q")
    assert await broker.sessions() == []
