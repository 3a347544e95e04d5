"""Races: concurrent claims, an ack racing the lease's expiry, and a bucket
changing owner while its old owner holds a lease. Everything is started at
once with asyncio.gather, in shuffled orders; a store that serialises
operations (SQLite) sees every order, one that runs them in parallel
(PostgreSQL) sees them overlap."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from conveyor.broker.broker import Broker
from conveyor.core.errors import LeaseLost
from conveyor.core.ring import bucket_of, bucket_owners
from conveyor.core.types import Delivery, NewMessage

if TYPE_CHECKING:
    from conftest import FakeClock


async def settle(call: Awaitable[Any]) -> bool:
    """True if the settle landed, False if the lease was lost."""
    try:
        await call
    except LeaseLost:
        return False
    return True


async def later(rng: random.Random, call: Awaitable[Any]) -> Any:
    """Start ``call`` after a few turns of the event loop or a few
    milliseconds: the operations of one gather then reach the store in
    different commits and orders, on a fast store and on a slower one."""
    if rng.random() < 0.5:
        for _ in range(rng.randrange(8)):
            await asyncio.sleep(0)
    else:
        await asyncio.sleep(rng.uniform(0.001, 0.03))
    return await call


async def test_concurrent_receives_never_hand_out_one_message_twice(broker: Broker) -> None:
    await broker.create_queue("q", visibility_timeout=3600)
    total = 400
    await broker.enqueue_many(
        "q", [NewMessage(body=b"%d" % n, priority=n % 3) for n in range(total)]
    )
    sessions = [await broker.open_session(f"c{n}") for n in range(12)]
    seen: Counter[str] = Counter()
    rng = random.Random(7)
    for _ in range(50):
        calls = [broker.receive(s, "q", max=rng.randint(1, 9)) for s in sessions for _ in (1, 2)]
        rng.shuffle(calls)
        rounds = await asyncio.gather(*calls)
        got = [d for r in rounds for d in r]
        seen.update(d.id for d in got)
        if not got:
            break
    duplicated = [i for i, n in seen.items() if n > 1]
    assert not duplicated, f"{len(duplicated)} messages delivered to two sessions at once"
    assert len(seen) == total
    stats = await broker.stats("q")
    assert (stats.ready, stats.leased, stats.delivered_total) == (0, total, total)
    infos = {s.id: s.leases for s in await broker.sessions()}
    assert sum(infos.values()) == total


class GroupLedger:
    """What the test knows: the leases held now, and each group's deliveries."""

    def __init__(self, groups: list[str], buckets: int) -> None:
        self.buckets = buckets
        self.held: dict[str, tuple[str, Delivery]] = {}  # id -> (session, delivery)
        self.order: dict[str, list[int]] = {g: [] for g in groups}

    def delivered(self, session: str, d: Delivery) -> None:
        assert d.id not in self.held, f"{d.id} delivered while leased"
        self.held[d.id] = (session, d)
        group, number = d.body.decode().split("/")
        if group != "plain":
            self.order[group].append(int(number))

    def check(self) -> None:
        """One lease per group, one holder per bucket."""
        grouped = [(s, d.group) for s, d in self.held.values() if d.group is not None]
        per_group = Counter(g for _, g in grouped)
        assert max(per_group.values(), default=0) <= 1, per_group
        holders: dict[int, set[str]] = {}
        for s, g in grouped:
            holders.setdefault(bucket_of(g, self.buckets), set()).add(s)
        assert all(len(h) == 1 for h in holders.values()), holders

    def done(self) -> bool:
        return not self.held and all(n and n[-1] == 5 for n in self.order.values())


async def drain(broker: Broker, sessions: list[str], ledger: GroupLedger) -> None:
    """Ack what is held, then take whatever is left, each message from the
    owner of its bucket."""
    for _, d in ledger.held.values():
        await broker.ack(d.id, d.token)
    ledger.held.clear()
    while got := [(s, d) for s in sessions for d in await broker.receive(s, "q", max=100)]:
        for s, d in got:
            ledger.delivered(s, d)
            await broker.ack(d.id, d.token)
        ledger.held.clear()


async def test_concurrent_consumers_keep_groups_in_order_and_exclusive(broker: Broker) -> None:
    """Each group's messages come in enqueues of their own: the first three
    before the consumers start, the last three racing them (one per group
    and step), so a message must be held back behind one that an earlier
    enqueue stored, not only behind one of its own batch."""
    await broker.create_queue("q", buckets=4, visibility_timeout=3600)
    groups = [f"g{n}" for n in range(12)]
    for n in range(3):
        await asyncio.gather(*(broker.enqueue("q", f"{g}/{n}".encode(), group=g) for g in groups))
    await broker.enqueue_many("q", [NewMessage(body=b"plain/%d" % n) for n in range(20)])
    sessions = [await broker.open_session(f"c{n}") for n in range(3)]
    ledger = GroupLedger(groups, 4)
    rng = random.Random(11)
    for step in range(60):
        if step == 5:  # a consumer joins while the others hold leases
            sessions.append(await broker.open_session("late"))
        if step == 12:  # and one leaves, its leases released at once
            gone = sessions.pop(0)
            await broker.close_session(gone)
            ledger.held = {i: (s, d) for i, (s, d) in ledger.held.items() if s != gone}
        to_ack = rng.sample(sorted(ledger.held), k=len(ledger.held) // 2)
        calls: list[Awaitable[Any]] = [
            broker.receive(s, "q", max=rng.randint(1, 4)) for s in sessions
        ]
        calls += [broker.ack(i, ledger.held[i][1].token) for i in to_ack]
        if step < 3:  # the group's next message, while its previous ones are held
            calls += [broker.enqueue("q", f"{g}/{3 + step}".encode(), group=g) for g in groups]
        order_of = list(range(len(calls)))
        rng.shuffle(order_of)
        results = await asyncio.gather(*(later(rng, calls[i]) for i in order_of))
        by_call = dict(zip(order_of, results, strict=True))
        for i in to_ack:
            del ledger.held[i]
        for n, session in enumerate(sessions):
            for d in by_call[n]:
                ledger.delivered(session, d)
        ledger.check()
        if ledger.done():
            break
    await drain(broker, sessions, ledger)
    stats = await broker.stats("q")
    assert (stats.ready, stats.leased, stats.acked_total) == (0, 0, 12 * 6 + 20)
    for group, numbers in ledger.order.items():
        # A message released by the leaving session is delivered again: in
        # order, the sequence may repeat its last element, never skip back.
        deduped = [n for k, n in enumerate(numbers) if k == 0 or numbers[k - 1] != n]
        assert deduped == list(range(6)), f"group {group} out of order: {numbers}"


async def test_an_ack_racing_the_expiry_of_its_lease_wins_or_loses_cleanly(
    broker: Broker, clock: FakeClock
) -> None:
    """Exactly one outcome per message: the slow consumer's ack lands (and
    nobody else gets it), or it is refused with LeaseLost and the message is
    delivered again. Never both, never neither."""
    await broker.create_queue("q", visibility_timeout=5, max_attempts=10)
    rng = random.Random(3)
    per_round = 30
    outcomes: Counter[str] = Counter()
    for round_ in range(16):
        if round_ >= 3 and outcomes["acked"] and outcomes["raced_and_redelivered"]:
            break
        sent = await broker.enqueue_many(
            "q", [NewMessage(body=b"%d-%d" % (round_, n)) for n in range(per_round)]
        )
        slow = await broker.open_session(f"slow{round_}", timeout=1000)
        fast = await broker.open_session(f"fast{round_}", timeout=1000)
        leased = await broker.receive(slow, "q", max=per_round)
        assert len(leased) == per_round
        clock.advance(6)  # every lease has run out; the monitor is about to run
        acks = [settle(broker.ack(d.id, d.token)) for d in leased]
        others: list[Awaitable[Any]] = [broker.sweep_once()]
        others += [broker.receive(fast, "q", max=rng.randint(1, 10)) for _ in range(8)]
        calls: list[Awaitable[Any]] = acks + others
        order_of = list(range(len(calls)))
        rng.shuffle(order_of)
        results = await asyncio.gather(*(later(rng, calls[i]) for i in order_of))
        by_call = dict(zip(order_of, results, strict=True))
        acked = {leased[n].id for n in range(per_round) if by_call[n]}
        # calls[per_round] is the sweep; the receives follow it.
        redelivered = [d for n in range(per_round + 1, len(calls)) for d in by_call[n]]
        again = {d.id for d in redelivered}
        assert len(again) == len(redelivered), "delivered twice"
        assert not acked & again, f"acked and delivered again: {sorted(acked & again)}"
        # Those neither acked nor delivered yet must still be there.
        await broker.sweep_once()
        rest = await broker.receive(fast, "q", max=per_round)
        assert not {d.id for d in rest} & (acked | again)
        redelivered += rest
        outcomes.update(acked=len(acked), raced_and_redelivered=len(again))
        assert acked | {d.id for d in redelivered} == {r.id for r in sent}, "a message was lost"
        for d in redelivered:
            assert d.token > next(x.token for x in leased if x.id == d.id)
            await broker.ack(d.id, d.token)
        # Never acked twice: every first-delivery token is now refused.
        for d in leased:
            assert not await settle(broker.ack(d.id, d.token))
        stats = await broker.stats("q")
        assert (stats.ready, stats.scheduled, stats.leased) == (0, 0, 0)
        assert stats.acked_total == per_round * (round_ + 1)
    # The shuffled orders made both outcomes happen (in a few rounds at most).
    assert outcomes["acked"] > 0 and outcomes["raced_and_redelivered"] > 0, outcomes


async def test_a_new_bucket_owner_gets_nothing_while_the_old_owner_holds_a_lease(
    broker: Broker,
) -> None:
    await broker.create_queue("q", buckets=1, visibility_timeout=3600)
    x, y = await broker.open_session("x"), await broker.open_session("y")
    new_owner = bucket_owners({x: 1.0, y: 1.0}, "q", 1)[0]
    old_owner = y if new_owner == x else x
    await broker.enqueue("q", b"a/0", group="a")
    [a0] = await broker.receive(old_owner, "q")  # alone, it owns the only bucket
    # The new owner joins: by the ring the bucket is its own now.
    assert await broker.receive(new_owner, "q") == []
    await broker.enqueue_many(
        "q",
        [NewMessage(body=b"a/1", group="a")]
        + [NewMessage(body=f"{g}/0".encode(), group=g) for g in "bcdefgh"],
    )
    # Many receives race: none may take from the bucket while the old owner
    # still holds a0.
    calls = [broker.receive(new_owner, "q", max=3) for _ in range(10)]
    calls += [broker.receive(old_owner, "q", max=3) for _ in range(10)]
    random.Random(5).shuffle(calls)
    assert [d for r in await asyncio.gather(*calls) for d in r] == []
    # The ack races the new owner's receives: whatever the new owner gets,
    # it gets once, and the old owner gets nothing more.
    receives = [broker.receive(new_owner, "q", max=3) for _ in range(10)]
    rng = random.Random(6)
    position = rng.randrange(len(receives) + 1)
    calls2: list[Awaitable[Any]] = list(receives)
    calls2.insert(position, broker.ack(a0.id, a0.token))
    calls2.append(broker.receive(old_owner, "q", max=10))
    results = await asyncio.gather(*calls2)
    assert results[-1] == [], "the old owner received from a bucket it lost"
    got = [d for r in results[:-1] if r for d in r]
    got += await broker.receive(new_owner, "q", max=100)
    bodies = sorted(d.body for d in got)
    assert bodies == sorted([b"a/1"] + [f"{g}/0".encode() for g in "bcdefgh"])
