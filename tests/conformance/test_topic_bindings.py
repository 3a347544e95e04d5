"""Topics: bindings with exact names and `*`/`#` patterns, atomic publish,
unbind (docs/semantics.md, "Topics")."""

from __future__ import annotations

import pytest

from conveyor.broker.broker import Broker
from conveyor.core.errors import InvalidArgument, QueueFull, QueueNotFound
from conveyor.core.types import Binding


async def enqueued(broker: Broker, queue: str) -> int:
    return (await broker.stats(queue)).enqueued_total


async def test_publish_puts_a_copy_in_each_queue_bound_by_exact_name(broker: Broker) -> None:
    await broker.create_queue("billing")
    await broker.create_queue("shipping")
    await broker.create_queue("audit")
    await broker.bind("orders.paid", "billing")
    await broker.bind("orders.paid", "shipping")
    await broker.bind("orders.new", "audit")
    results = await broker.publish(
        "orders.paid", b"order 1", priority=3, headers={"k": "v"}, group="customer-9"
    )
    assert sorted(results) == ["billing", "shipping"]
    assert results["billing"].id != results["shipping"].id
    assert not any(r.duplicate for r in results.values())
    assert await enqueued(broker, "audit") == 0
    session = await broker.open_session("c")
    for queue in ("billing", "shipping"):
        [d] = await broker.receive(session, queue)
        assert (d.id, d.body, d.priority, d.headers, d.group) == (
            results[queue].id,
            b"order 1",
            3,
            {"k": "v"},
            "customer-9",
        )


async def test_patterns_match_one_word_with_star_and_any_with_hash(broker: Broker) -> None:
    patterns = {
        "star": "orders.*",
        "hash": "orders.#",
        "all": "#",
        "paid": "*.paid",
        "exact": "orders.eu.paid",
        "middle": "orders.#.paid",
    }
    for queue, pattern in patterns.items():
        await broker.create_queue(queue)
        await broker.bind(pattern, queue)
    expected = {
        "orders": ["all", "hash"],
        "orders.paid": ["all", "hash", "middle", "paid", "star"],
        "orders.eu.paid": ["all", "exact", "hash", "middle"],
        "refunds.paid": ["all", "paid"],
        "orders.eu.paid.late": ["all", "hash"],
        "other": ["all"],
    }
    for topic, queues in expected.items():
        assert sorted(await broker.publish(topic, topic.encode())) == queues, topic
    for queue in patterns:
        want = sum(1 for queues in expected.values() if queue in queues)
        assert await enqueued(broker, queue) == want, queue


async def test_a_queue_bound_twice_gets_one_copy(broker: Broker) -> None:
    await broker.create_queue("q")
    await broker.bind("a.*", "q")
    await broker.bind("a.b", "q")
    await broker.bind("a.b", "q")  # binding again changes nothing
    assert await broker.bindings() == [Binding("a.*", "q"), Binding("a.b", "q")]
    assert list(await broker.publish("a.b", b"x")) == ["q"]
    assert await enqueued(broker, "q") == 1


async def test_a_topic_nobody_is_bound_to_stores_nothing(broker: Broker) -> None:
    await broker.create_queue("q")
    await broker.bind("a.b", "q")
    assert await broker.publish("a.c", b"x") == {}
    assert await enqueued(broker, "q") == 0


async def test_publish_is_atomic_across_the_bound_queues(broker: Broker) -> None:
    await broker.create_queue("roomy")
    await broker.create_queue("full", max_length=1)
    await broker.bind("t", "roomy")
    await broker.bind("t", "full")
    await broker.enqueue("full", b"already here")
    with pytest.raises(QueueFull):
        await broker.publish("t", b"x")
    assert await enqueued(broker, "roomy") == 0
    assert (await broker.stats("full")).ready == 1
    with pytest.raises(InvalidArgument):  # a bad message: nothing anywhere either
        await broker.publish("t", b"x", priority=10)
    assert await enqueued(broker, "roomy") == 0


async def test_publish_honours_dedup_keys_per_queue(broker: Broker) -> None:
    await broker.create_queue("a")
    await broker.create_queue("b")
    await broker.bind("t.#", "a")
    await broker.bind("t.#", "b")
    first = await broker.publish("t.x", b"1", dedup_key="evt-1")
    again = await broker.publish("t.x", b"2", dedup_key="evt-1")
    assert {q: r.id for q, r in again.items()} == {q: r.id for q, r in first.items()}
    assert all(r.duplicate for r in again.values())
    assert await enqueued(broker, "a") == await enqueued(broker, "b") == 1


async def test_publish_with_a_delay(broker: Broker) -> None:
    await broker.create_queue("q")
    await broker.bind("t", "q")
    await broker.publish("t", b"later", delay=30)
    stats = await broker.stats("q")
    assert (stats.ready, stats.scheduled) == (0, 1)


async def test_unbind_stops_the_copies(broker: Broker) -> None:
    await broker.create_queue("q")
    await broker.create_queue("r")
    await broker.bind("t.#", "q")
    await broker.bind("t.#", "r")
    assert await broker.unbind("t.#", "q") is True
    assert await broker.unbind("t.#", "q") is False
    assert await broker.unbind("t.*", "r") is False  # never bound
    assert await broker.bindings() == [Binding("t.#", "r")]
    assert list(await broker.publish("t.x", b"x")) == ["r"]
    assert await enqueued(broker, "q") == 0


async def test_binding_needs_a_queue_and_a_valid_pattern(broker: Broker) -> None:
    await broker.create_queue("q")
    with pytest.raises(QueueNotFound):
        await broker.bind("t", "missing")
    for pattern in ("", "a..b", "a.b c", ".a", "a.", "a.*x"):
        with pytest.raises(InvalidArgument):
            await broker.bind(pattern, "q")
    for topic in ("", "a.*", "a.#", "a..b", "a b"):
        with pytest.raises(InvalidArgument):
            await broker.publish(topic, b"x")
    assert await broker.bindings() == []
