"""Queues: create, configure, list, delete and purge (docs/semantics.md, "Queues")."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from conveyor.broker.broker import Broker
from conveyor.core.errors import QueueExists, QueueFull, QueueNotFound
from conveyor.core.types import Binding, Delivery, NewMessage

if TYPE_CHECKING:
    from conftest import FakeClock


async def test_a_new_queue_has_the_documented_defaults(broker: Broker, clock: FakeClock) -> None:
    config = await broker.create_queue("orders")
    assert config.name == "orders"
    assert (
        config.visibility_timeout,
        config.max_attempts,
        config.max_length,
        config.dedup_window,
        config.retry_base,
        config.retry_max,
        config.retry_jitter,
        config.buckets,
        config.result_ttl,
    ) == (30.0, 5, None, 300.0, 1.0, 300.0, 0.2, 64, 86400.0)
    assert config.created_at == clock.now
    assert await broker.get_queue("orders") == config


async def test_a_queue_keeps_the_settings_it_was_created_with(broker: Broker) -> None:
    settings = {
        "visibility_timeout": 12.5,
        "max_attempts": 7,
        "max_length": 1000,
        "dedup_window": 60.0,
        "retry_base": 0.5,
        "retry_max": 40.0,
        "retry_jitter": 0.0,
        "buckets": 8,
        "result_ttl": 3600.0,
    }
    config = await broker.create_queue("tuned", **settings)
    for key, value in settings.items():
        assert getattr(config, key) == value, key
    assert await broker.get_queue("tuned") == config


async def test_creating_again_with_the_same_settings_returns_the_queue(broker: Broker) -> None:
    first = await broker.create_queue("q", max_attempts=3, visibility_timeout=9.0)
    again = await broker.create_queue("q", max_attempts=3, visibility_timeout=9.0)
    assert again == first
    assert [c.name for c in await broker.queues()] == ["q"]


async def test_creating_again_with_other_settings_raises_queue_exists(broker: Broker) -> None:
    await broker.create_queue("q", max_attempts=3)
    with pytest.raises(QueueExists) as caught:
        await broker.create_queue("q", max_attempts=4)
    assert caught.value.code == "queue_exists"
    assert (await broker.get_queue("q")).max_attempts == 3
    with pytest.raises(QueueExists):
        await broker.create_queue("q", max_attempts=3, exist_ok=False)


async def test_queues_lists_every_queue_by_name(broker: Broker) -> None:
    for name in ("beta", "alpha", "gamma.v2", "a:b-c_d"):
        await broker.create_queue(name)
    assert [c.name for c in await broker.queues()] == ["a:b-c_d", "alpha", "beta", "gamma.v2"]
    await broker.delete_queue("beta")
    assert [c.name for c in await broker.queues()] == ["a:b-c_d", "alpha", "gamma.v2"]


async def test_configure_changes_only_the_settings_given(broker: Broker) -> None:
    created = await broker.create_queue("q", max_attempts=3, visibility_timeout=10.0)
    changed = await broker.configure_queue("q", max_length=2, retry_base=4.0)
    assert (changed.max_attempts, changed.visibility_timeout) == (3, 10.0)
    assert (changed.max_length, changed.retry_base) == (2, 4.0)
    assert changed.created_at == created.created_at
    assert await broker.get_queue("q") == changed
    assert await broker.queues() == [changed]


async def test_configured_settings_apply_to_what_follows(broker: Broker, clock: FakeClock) -> None:
    await broker.create_queue("q")
    await broker.configure_queue("q", visibility_timeout=7.0, max_length=1)
    await broker.enqueue("q", b"one")
    with pytest.raises(QueueFull):
        await broker.enqueue("q", b"two")
    session = await broker.open_session("c")
    [delivery] = await broker.receive(session, "q")
    assert delivery.deadline == clock.now + 7.0


async def test_changing_the_bucket_count_strands_no_grouped_message(broker: Broker) -> None:
    """Groups hash into buckets; after the count changes every grouped
    message must still be delivered, each group in order."""
    await broker.create_queue("q", buckets=64)
    groups = [f"g{i}" for i in range(24)]
    await broker.enqueue_many(
        "q", [NewMessage(body=f"{g}/{n}".encode(), group=g) for n in range(3) for g in groups]
    )
    session = await broker.open_session("c")
    seen: dict[str, list[int]] = {g: [] for g in groups}

    async def take_round(ack: bool = True) -> list[Delivery]:
        got = await broker.receive(session, "q", max=100)
        for d in got:
            group, n = d.body.decode().split("/")
            seen[group].append(int(n))
            if ack:
                await broker.ack(d.id, d.token)
        return got

    held = await take_round(ack=False)  # every group's head, under 64 buckets
    assert len(held) == 24
    await broker.configure_queue("q", buckets=3)  # while their leases are held
    assert await broker.receive(session, "q", max=100) == []
    for d in held:
        await broker.ack(d.id, d.token)
    assert len(await take_round()) == 24
    await broker.configure_queue("q", buckets=16)
    assert len(await take_round()) == 24
    assert seen == {g: [0, 1, 2] for g in groups}
    stats = await broker.stats("q")
    assert (stats.ready, stats.scheduled, stats.leased) == (0, 0, 0)


async def test_delete_removes_messages_dead_letters_and_bindings(broker: Broker) -> None:
    await broker.create_queue("q")
    await broker.create_queue("other")
    await broker.bind("events.#", "q")
    await broker.bind("events.#", "other")
    await broker.enqueue("q", b"ready")
    await broker.enqueue("q", b"poison")
    session = await broker.open_session("c")
    [first] = await broker.receive(session, "q")
    await broker.dead(first.id, first.token, "bad")
    assert (await broker.stats("q")).dead == 1

    await broker.delete_queue("q")

    assert [c.name for c in await broker.queues()] == ["other"]
    assert await broker.bindings() == [Binding("events.#", "other")]
    for call in (
        broker.stats("q"),
        broker.enqueue("q", b"x"),
        broker.get_queue("q"),
        broker.dead_letters("q"),
        broker.receive(session, "q"),
        broker.purge("q"),
        broker.delete_queue("q"),
    ):
        with pytest.raises(QueueNotFound) as caught:
            await call
        assert caught.value.code == "queue_not_found"
    published = await broker.publish("events.x", b"e")
    assert list(published) == ["other"]
    # A queue of the same name starts empty.
    await broker.create_queue("q")
    stats = await broker.stats("q")
    assert (stats.ready, stats.scheduled, stats.leased, stats.dead) == (0, 0, 0, 0)
    assert stats.enqueued_total == 0
    assert await broker.dead_letters("q") == []
    assert await broker.receive(session, "q", max=10) == []


async def test_a_consumer_of_a_deleted_queue_consumes_its_successor(broker: Broker) -> None:
    """Bucket ownership goes by the queue's consumers: a session that received
    from a deleted queue must count as a consumer of the new one."""
    await broker.create_queue("q")
    session = await broker.open_session("c")
    assert await broker.receive(session, "q") == []
    await broker.delete_queue("q")
    await broker.create_queue("q")
    await broker.enqueue("q", b"grouped", group="g")
    await broker.enqueue("q", b"plain")
    got = await broker.receive(session, "q", max=10)
    assert sorted(d.body for d in got) == [b"grouped", b"plain"]


async def test_purge_removes_waiting_messages_and_keeps_leased_and_dead(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q")
    session = await broker.open_session("c")
    await broker.enqueue("q", b"leased")
    [leased] = await broker.receive(session, "q", visibility=3600)
    await broker.enqueue("q", b"dead")
    [dead] = await broker.receive(session, "q")
    await broker.dead(dead.id, dead.token, "bad")
    await broker.enqueue("q", b"ready")
    await broker.enqueue("q", b"delayed", delay=60)
    await broker.enqueue("q", b"g1", group="g")
    await broker.enqueue("q", b"g2", group="g")  # blocked behind g1
    before = await broker.stats("q")
    assert (before.ready, before.scheduled, before.leased, before.dead) == (3, 1, 1, 1)

    assert await broker.purge("q") == 4

    after = await broker.stats("q")
    assert (after.ready, after.scheduled, after.leased, after.dead) == (0, 0, 1, 1)
    clock.advance(61)
    await broker.heartbeat(session)
    await broker.sweep_once()
    assert await broker.receive(session, "q", max=10) == []
    await broker.ack(leased.id, leased.token)  # the lease is untouched
    assert [m.id for m in await broker.dead_letters("q")] == [dead.id]
    assert await broker.purge("q") == 0
