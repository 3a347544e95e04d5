"""Volume: ten thousand messages across every priority, some delayed, come
out in the documented order (docs/semantics.md, "Delivery")."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from conveyor.broker.broker import Broker
from conveyor.core.types import Ack, Delivery, NewMessage

if TYPE_CHECKING:
    from conftest import FakeClock

TOTAL = 10_000


async def test_ten_thousand_messages_come_out_by_priority_then_time_then_enqueue_order(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("bulk", visibility_timeout=86400)
    rng = random.Random(2024)
    start = clock.now
    # (priority, available_at, delay) per body; a tenth are delayed 1 to 100 s.
    specs: dict[bytes, tuple[int, float]] = {}
    ids: dict[bytes, str] = {}
    batch_size = 1000
    for first in range(0, TOTAL, batch_size):
        batch = []
        for n in range(first, first + batch_size):
            priority = rng.randrange(10)
            delay = float(rng.randint(1, 100)) if rng.random() < 0.1 else None
            body = b"%05d" % n
            specs[body] = (priority, start + (delay or 0.0))
            batch.append(NewMessage(body=body, priority=priority, delay=delay))
        results = await broker.enqueue_many("bulk", batch)
        ids.update((m.body, r.id) for m, r in zip(batch, results, strict=True))
    delayed = sum(1 for _, at in specs.values() if at > start)
    stats = await broker.stats("bulk")
    assert (stats.ready, stats.scheduled) == (TOTAL - delayed, delayed)

    session = await broker.open_session("bulk", timeout=1e6)
    delivered: list[Delivery] = []

    async def drain() -> list[Delivery]:
        """Everything ready, in receives of odd sizes: the order must hold
        across receives, not only within one."""
        got: list[Delivery] = []
        while batch := await broker.receive(session, "bulk", max=rng.randint(50, 400)):
            got += batch
        return got

    def expected_order(bodies: list[bytes]) -> list[bytes]:
        return sorted(bodies, key=lambda b: (-specs[b][0], specs[b][1], ids[b]))

    # Now: every message that is not delayed, in priority order, FIFO within one.
    now_ready = await drain()
    bodies = [d.body for d in now_ready]
    assert len(bodies) == TOTAL - delayed
    assert all(specs[b][1] <= clock.now for b in bodies), "a delayed message came early"
    assert bodies == expected_order(bodies)
    assert [d.priority for d in now_ready] == sorted((d.priority for d in now_ready), reverse=True)
    delivered += now_ready

    # Then time passes in steps: each step releases exactly the messages due.
    for step in (10, 35, 60, 99.5, 100):
        clock.now = start + step
        got = await drain()
        bodies = [d.body for d in got]
        due = {b for b, (_, at) in specs.items() if start < at <= start + step}
        already = {d.body for d in delivered}
        assert set(bodies) == due - already, f"at +{step}s"
        assert bodies == expected_order(bodies), f"at +{step}s"
        delivered += got

    assert len({d.id for d in delivered}) == TOTAL
    for first in range(0, TOTAL, 1000):
        chunk = delivered[first : first + 1000]
        outcomes = await broker.ack_many([Ack(d.id, d.token) for d in chunk])
        assert outcomes == [None] * len(chunk)
    stats = await broker.stats("bulk")
    assert (stats.ready, stats.scheduled, stats.leased) == (0, 0, 0)
    assert (stats.enqueued_total, stats.delivered_total, stats.acked_total) == (TOTAL,) * 3
