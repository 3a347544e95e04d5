"""Groups: per-key order and exclusivity, and bucket ownership over the live
consumer sessions (docs/semantics.md, "Groups")."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from conveyor.broker.broker import Broker
from conveyor.core.errors import LeaseLost
from conveyor.core.ring import bucket_of, bucket_owners
from conveyor.core.types import Delivery, NewMessage

if TYPE_CHECKING:
    from conftest import FakeClock


def one_group_per_bucket(buckets: int, prefix: str = "g") -> dict[int, str]:
    """A group name hashing into each bucket."""
    found: dict[int, str] = {}
    for n in itertools.count():
        group = f"{prefix}{n}"
        found.setdefault(bucket_of(group, buckets), group)
        if len(found) == buckets:
            return found
    raise AssertionError("unreachable")


def bodies(got: list[Delivery]) -> list[bytes]:
    return [d.body for d in got]


async def test_a_group_goes_out_in_enqueue_order_one_at_a_time(broker: Broker) -> None:
    await broker.create_queue("q")
    # Interleaved groups; priority does not reorder a group.
    await broker.enqueue("q", b"a1", group="a", priority=0)
    await broker.enqueue("q", b"b1", group="b", priority=1)
    await broker.enqueue("q", b"a2", group="a", priority=9)
    await broker.enqueue("q", b"b2", group="b")
    await broker.enqueue("q", b"a3", group="a", priority=5)
    await broker.enqueue("q", b"plain")
    session = await broker.open_session("c")
    got = await broker.receive(session, "q", max=10)
    assert sorted(d.body for d in got) == [b"a1", b"b1", b"plain"]
    stats = await broker.stats("q")
    assert (stats.ready, stats.leased) == (3, 3)  # ready counts the blocked ones
    assert await broker.receive(session, "q", max=10) == []
    plain = next(d for d in got if d.group is None)
    await broker.ack(plain.id, plain.token)
    held = {d.group: d for d in got if d.group is not None}
    order: dict[str, list[bytes]] = {"a": [b"a1"], "b": [b"b1"]}
    while held:
        group = min(held)
        d = held.pop(group)
        await broker.ack(d.id, d.token)
        nxt = await broker.receive(session, "q", max=10)
        assert len(nxt) <= 1, "more than one message of a group at once"
        for n in nxt:
            assert n.group == group
            order[group].append(n.body)
            held[group] = n
    assert order == {"a": [b"a1", b"a2", b"a3"], "b": [b"b1", b"b2"]}


async def test_groups_do_not_block_each_other(broker: Broker, clock: FakeClock) -> None:
    await broker.create_queue("q")
    await broker.enqueue_many(
        "q", [NewMessage(body=f"{g}{n}".encode(), group=g) for n in (1, 2) for g in "xyz"]
    )
    session = await broker.open_session("c", timeout=1000)
    first = await broker.receive(session, "q", max=1)
    assert bodies(first) == [b"x1"]
    rest = await broker.receive(session, "q", max=10)
    assert sorted(d.body for d in rest) == [b"y1", b"z1"]


async def test_a_nacked_message_is_retried_before_the_ones_behind_it(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q", retry_base=5, retry_jitter=0, max_attempts=3)
    await broker.enqueue("q", b"g1", group="g")
    await broker.enqueue("q", b"g2", group="g")
    session = await broker.open_session("c", timeout=1000)
    [g1] = await broker.receive(session, "q", max=10)
    await broker.nack(g1.id, g1.token, delay=0)
    [again] = await broker.receive(session, "q", max=10)
    assert again.id == g1.id and again.attempts == 2
    await broker.nack(again.id, again.token)  # backoff: 10 s
    clock.advance(9)
    assert await broker.receive(session, "q", max=10) == []
    clock.advance(1)
    [third] = await broker.receive(session, "q", max=10)
    assert third.id == g1.id
    await broker.nack(third.id, third.token, delay=0)  # last attempt: dead
    [g2] = await broker.receive(session, "q", max=10)
    assert g2.body == b"g2"


async def test_the_next_of_a_group_follows_a_dead_lettered_one(broker: Broker) -> None:
    await broker.create_queue("q")
    await broker.enqueue_many("q", [NewMessage(body=b"%d" % n, group="g") for n in range(3)])
    session = await broker.open_session("c")
    [first] = await broker.receive(session, "q", max=10)
    await broker.dead(first.id, first.token, "poison")
    [second] = await broker.receive(session, "q", max=10)
    assert second.body == b"1"


async def test_an_expired_lease_gives_the_same_message_again_first(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q", visibility_timeout=5)
    await broker.enqueue_many("q", [NewMessage(body=b"%d" % n, group="g") for n in range(3)])
    session = await broker.open_session("c", timeout=1000)
    [first] = await broker.receive(session, "q", max=10)
    clock.advance(6)
    await broker.sweep_once()
    [again] = await broker.receive(session, "q", max=10)
    assert again.id == first.id and again.token > first.token


async def test_a_blocked_message_expiring_does_not_let_the_next_one_through(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q", visibility_timeout=100)
    await broker.enqueue("q", b"g1", group="g")
    await broker.enqueue("q", b"g2", group="g", ttl=5)
    await broker.enqueue("q", b"g3", group="g")
    session = await broker.open_session("c", timeout=1000)
    [g1] = await broker.receive(session, "q", max=10)
    clock.advance(10)
    swept = await broker.sweep_once()
    assert swept.messages_expired == 1
    assert await broker.receive(session, "q", max=10) == [], "g3 delivered while g1 is held"
    await broker.ack(g1.id, g1.token)
    [g3] = await broker.receive(session, "q", max=10)
    assert g3.body == b"g3"
    assert [m.body for m in await broker.dead_letters("q")] == [b"g2"]


async def test_an_expired_group_head_lets_the_next_one_lead(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q")
    await broker.enqueue("q", b"g1", group="g", ttl=5)
    await broker.enqueue("q", b"g2", group="g")
    clock.advance(6)
    session = await broker.open_session("c")
    await broker.sweep_once()
    [g2] = await broker.receive(session, "q", max=10)
    assert g2.body == b"g2"


async def test_each_session_receives_only_from_its_own_buckets(broker: Broker) -> None:
    """Owners follow rendezvous hashing over the consumers, weighted by capacity."""
    buckets = 16
    await broker.create_queue("q", buckets=buckets)
    capacities = {
        await broker.open_session("small", capacity=1): 1,
        await broker.open_session("medium", capacity=2): 2,
        await broker.open_session("large", capacity=5): 5,
    }
    for session in capacities:
        assert await broker.receive(session, "q") == []  # now a consumer of q
    groups = [f"g{n}" for n in range(64)]
    await broker.enqueue_many("q", [NewMessage(body=g.encode(), group=g) for g in groups])
    owners = bucket_owners({s: float(c) for s, c in capacities.items()}, "q", buckets)
    received: dict[str, str] = {}
    for session in capacities:
        for d in await broker.receive(session, "q", max=100):
            assert d.group is not None
            received[d.group] = session
    assert sorted(received) == sorted(groups)
    for group, session in received.items():
        assert session == owners[bucket_of(group, buckets)], f"{group} went to the wrong owner"


async def test_buckets_move_only_between_old_and_new_owners(broker: Broker) -> None:
    buckets = 32
    await broker.create_queue("q", buckets=buckets)
    groups = one_group_per_bucket(buckets)
    a, b, c = [await broker.open_session(name) for name in "abc"]
    sessions = [a, b]

    async def owners_seen() -> dict[int, str]:
        await broker.enqueue_many(
            "q", [NewMessage(body=g.encode(), group=g) for g in groups.values()]
        )
        seen: dict[int, str] = {}
        for session in sessions:
            for d in await broker.receive(session, "q", max=100):
                assert d.group is not None
                seen[bucket_of(d.group, buckets)] = session
                await broker.ack(d.id, d.token)
        assert len(seen) == buckets, "some grouped messages were not delivered"
        return seen

    for session in sessions:
        await broker.receive(session, "q")
    two = await owners_seen()
    assert two == bucket_owners({a: 1.0, b: 1.0}, "q", buckets)

    sessions.append(c)
    await broker.receive(c, "q")  # c joins: about a third of the buckets move to it
    three = await owners_seen()
    assert three == bucket_owners({a: 1.0, b: 1.0, c: 1.0}, "q", buckets)
    moved = [k for k in range(buckets) if two[k] != three[k]]
    assert all(three[k] == c for k in moved), "a bucket moved between old owners"
    assert 1 <= len(moved) <= 20

    await broker.close_session(a)  # a leaves: only its buckets move
    sessions.remove(a)
    two_left = await owners_seen()
    assert two_left == bucket_owners({b: 1.0, c: 1.0}, "q", buckets)
    moved = [k for k in range(buckets) if three[k] != two_left[k]]
    assert sorted(moved) == sorted(k for k in range(buckets) if three[k] == a)


async def test_a_bucket_moves_only_once_its_old_owner_holds_no_lease_in_it(
    broker: Broker,
) -> None:
    await broker.create_queue("q", buckets=1)
    x, y = await broker.open_session("x"), await broker.open_session("y")
    new_owner = bucket_owners({x: 1.0, y: 1.0}, "q", 1)[0]
    old_owner = y if new_owner == x else x
    await broker.enqueue("q", b"a1", group="a")
    await broker.enqueue("q", b"b1", group="b")
    await broker.enqueue("q", b"a2", group="a")
    # Alone, the old owner owns the only bucket.
    [a1] = await broker.receive(old_owner, "q")
    assert a1.body == b"a1"
    await broker.enqueue("q", b"plain")
    # The new owner joins and wins the bucket by the ring, but the old owner
    # still holds a lease in it: only the ungrouped message goes out.
    got = await broker.receive(new_owner, "q", max=10)
    assert bodies(got) == [b"plain"]
    assert await broker.receive(new_owner, "q", max=10) == []
    assert await broker.receive(old_owner, "q", max=10) == []  # not its bucket any more
    await broker.ack(a1.id, a1.token)
    got = await broker.receive(new_owner, "q", max=10)
    assert sorted(d.body for d in got) == [b"a2", b"b1"]
    assert await broker.receive(old_owner, "q", max=10) == []


async def test_an_expired_lease_frees_the_bucket_for_the_new_owner(
    broker: Broker, clock: FakeClock
) -> None:
    await broker.create_queue("q", buckets=1, visibility_timeout=5)
    x = await broker.open_session("x", timeout=1000)
    y = await broker.open_session("y", timeout=1000)
    new_owner = bucket_owners({x: 1.0, y: 1.0}, "q", 1)[0]
    old_owner = y if new_owner == x else x
    await broker.enqueue("q", b"a1", group="a")
    await broker.enqueue("q", b"b1", group="b")
    [a1] = await broker.receive(old_owner, "q")
    assert await broker.receive(new_owner, "q", max=10) == []
    clock.advance(6)
    await broker.sweep_once()
    got = await broker.receive(new_owner, "q", max=10)
    assert sorted(d.body for d in got) == [b"a1", b"b1"]
    with_new_token = next(d for d in got if d.id == a1.id)
    assert with_new_token.token > a1.token
    try:
        await broker.ack(a1.id, a1.token)
    except LeaseLost:
        pass
    else:
        raise AssertionError("the old owner's stale token settled the new owner's lease")


async def test_a_closed_session_s_buckets_go_to_the_others(broker: Broker) -> None:
    buckets = 8
    await broker.create_queue("q", buckets=buckets)
    x, y = await broker.open_session("x"), await broker.open_session("y")
    await broker.receive(x, "q")
    await broker.receive(y, "q")
    groups = one_group_per_bucket(buckets)
    await broker.enqueue_many("q", [NewMessage(body=g.encode(), group=g) for g in groups.values()])
    owners = bucket_owners({x: 1.0, y: 1.0}, "q", buckets)
    held = await broker.receive(x, "q", max=100)
    assert len(held) == sum(1 for o in owners.values() if o == x)
    await broker.close_session(x)  # its leases are released, its buckets are free
    got = await broker.receive(y, "q", max=100)
    assert len(got) == buckets


async def test_a_consumer_that_stopped_receiving_owns_no_buckets(
    broker: Broker, clock: FakeClock
) -> None:
    buckets = 16
    await broker.create_queue("q", buckets=buckets)
    quiet = await broker.open_session("quiet", timeout=1000)
    busy = await broker.open_session("busy", timeout=1000)
    await broker.receive(quiet, "q")
    await broker.receive(busy, "q")
    clock.advance(31)  # quiet has not tried to receive for longer than consumer_idle
    await broker.heartbeat(quiet)  # alive, but not consuming
    await broker.receive(busy, "q")
    late = await broker.open_session("late", timeout=1000)
    await broker.receive(late, "q")
    groups = one_group_per_bucket(buckets)
    await broker.enqueue_many("q", [NewMessage(body=g.encode(), group=g) for g in groups.values()])
    owners = bucket_owners({busy: 1.0, late: 1.0}, "q", buckets)
    received = 0
    for session in (busy, late):
        for d in await broker.receive(session, "q", max=100):
            assert d.group is not None
            assert owners[bucket_of(d.group, buckets)] == session
            received += 1
    assert received == buckets, "grouped messages stranded with a consumer gone quiet"


async def test_consumer_idle_ends_a_consumers_buckets_exactly_at_its_edge(
    broker: Broker, clock: FakeClock
) -> None:
    """A session that last tried to receive ``consumer_idle`` seconds ago
    still owns buckets; a tick later it owns none. Each probe is a queue of
    its own, which the quiet session last received from at the same time,
    and a new session whose first receive there makes the broker share the
    queue's buckets out afresh."""
    clock.now = 1_700_000_000.0  # a time whose sums below are exact
    idle, tick, buckets = broker.config.consumer_idle, 0.001, 16
    groups = one_group_per_bucket(buckets)
    probes = {"before": -tick, "at": 0.0, "after": tick}
    quiet = await broker.open_session("quiet", timeout=10_000)
    prober = await broker.open_session("prober", timeout=10_000)
    for name in probes:
        await broker.create_queue(name, buckets=buckets)
        assert await broker.receive(quiet, name) == []  # its last try: now
        await broker.enqueue_many(
            name, [NewMessage(body=g.encode(), group=g) for g in groups.values()]
        )
    start = clock.now
    for name, offset in probes.items():
        clock.now = start + idle + offset
        got = await broker.receive(prober, name, max=100)
        if name == "after":
            assert len(got) == buckets, "a quiet session kept its buckets past consumer_idle"
        else:
            owners = bucket_owners({quiet: 1.0, prober: 1.0}, name, buckets)
            mine = {b for b, owner in owners.items() if owner == prober}
            assert 0 < len(mine) < buckets
            assert {bucket_of(d.group or "", buckets) for d in got} == mine, name
