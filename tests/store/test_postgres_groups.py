"""Group order across PostgreSQL nodes, interleaving by interleaving.

A member queued behind its group's head must stay behind a head until it is
committed: otherwise the head finishes unseen, the member is left blocked
with no head, and the next member enqueued leads in its place (the "ran out
of order" of tests/worker/test_cluster.py), or, if none comes, it is never
delivered. Each of the first tests holds one node's transaction open just
before its commit (a hook around the store function that runs it), lets
another node finish the group's head if the database lets it, and then
checks the order in which the group comes out; the last runs producers and
consumers on three nodes at once, with nacks.

"Nodes" are brokers on store instances of their own over the test's schema.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from conveyor.broker.broker import Broker, BrokerConfig
from conveyor.core.ids import parse_id

asyncpg = pytest.importorskip("asyncpg")

from conveyor.store.postgres import messages, queues  # noqa: E402
from conveyor.store.postgres import store as pg_store  # noqa: E402
from conveyor.store.postgres.options import parse_url  # noqa: E402
from conveyor.store.postgres.store import PostgresStore  # noqa: E402

MakeNode = Callable[[], Awaitable[Broker]]
WAIT = 30.0  # seconds: only a real failure (a hang) gets this far


class FakeClock:
    """The nodes' clock, shared, moved by nobody: the nodes agree on the time."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pg_url(postgres_url: str, postgres_schema: str) -> str:
    return postgres_url + ("&" if "?" in postgres_url else "?") + f"schema={postgres_schema}"


@pytest.fixture
async def node(pg_url: str) -> AsyncIterator[MakeNode]:
    started: list[Broker] = []
    clock = FakeClock()

    async def start() -> Broker:
        broker = Broker(PostgresStore(pg_url), BrokerConfig(), clock=clock, monitor=False)
        await broker.start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        await broker.close()


class Held:
    """The first transaction a hook picks, held open just before it commits."""

    def __init__(self) -> None:
        self.pid = 0  # its server process, once held
        self._reached = asyncio.Event()
        self._released = asyncio.Event()

    async def pause(self, conn: Any, picked: bool) -> None:
        if self.pid or not picked:
            return
        self.pid = conn.get_server_pid()
        self._reached.set()
        await self._released.wait()

    async def reached(self) -> None:
        await asyncio.wait_for(self._reached.wait(), WAIT)

    def release(self) -> None:
        self._released.set()


def hold_enqueue(monkeypatch: pytest.MonkeyPatch, body: bytes) -> Held:
    """Holds the enqueue round that stores ``body``."""
    held, inner = Held(), pg_store.enqueue_round

    async def round_(conn: Any, node: Any, jobs: Any, *rest: Any) -> None:
        await inner(conn, node, jobs, *rest)
        bodies = {m.body for job in jobs for _, ms in job.op.batches for m in ms}
        await held.pause(conn, body in bodies)

    monkeypatch.setattr(pg_store, "enqueue_round", round_)
    return held


def hold_ack(monkeypatch: pytest.MonkeyPatch, message_id: str) -> Held:
    """Holds the ack round that settles ``message_id``."""
    held, inner = Held(), messages.ack_round

    async def round_(conn: Any, node: Any, jobs: Any, *rest: Any) -> None:
        await inner(conn, node, jobs, *rest)
        await held.pause(conn, any(i.id == message_id for j in jobs for i in j.op.items))

    monkeypatch.setattr(messages, "ack_round", round_)
    return held


def hold_redrive(monkeypatch: pytest.MonkeyPatch, message_id: str) -> Held:
    """Holds the redrive that brings back ``message_id``."""
    held, inner = Held(), queues.redrive_one

    async def redrive_one(conn: Any, queue: str, seq: int, *rest: Any) -> None:
        await inner(conn, queue, seq, *rest)
        await held.pause(conn, seq == parse_id(message_id))

    monkeypatch.setattr(queues, "redrive_one", redrive_one)
    return held


async def waited_on(url: str, pid: int) -> bool:
    """Whether some transaction waits for a lock that process ``pid`` holds."""
    conn = await asyncpg.connect(parse_url(url).dsn)
    try:
        query = "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))"
        return bool(await conn.fetchval(query, pid))
    finally:
        await conn.close()


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await check():
        assert time.monotonic() < deadline, f"waited {WAIT}s for {what}"
        await asyncio.sleep(0.01)


async def finish_the_head(
    broker: Broker, session: str, held: Held, url: str
) -> tuple[list[bytes], list[asyncio.Task[None]]]:
    """While ``held`` is open, another node takes the group's head and acks
    it, as far as the database lets it: the bodies it got, and its acks
    (done, or waiting for ``held``)."""
    got = await broker.receive(session, "q", max=5)
    acks = [asyncio.create_task(broker.ack(d.id, d.token)) for d in got]

    async def settled_or_waiting() -> bool:
        return all(a.done() for a in acks) or await waited_on(url, held.pid)

    await until(settled_or_waiting, "the acks to land or to wait for the held transaction")
    return [d.body for d in got], acks


async def drain(broker: Broker, session: str) -> list[bytes]:
    """The rest of the group, one at a time, as it comes out."""
    order: list[bytes] = []
    while out := await broker.receive(session, "q", max=5):
        assert len(out) == 1, "two members of one group out at once"
        order.append(out[0].body)
        await broker.ack(out[0].id, out[0].token)
    stats = await broker.stats("q")  # ready counts the blocked too: none is left behind
    assert (stats.ready, stats.scheduled, stats.leased) == (0, 0, 0)
    return order


async def test_a_member_enqueued_while_its_head_is_acked_waits_for_the_next_head(
    node: MakeNode, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The producer's enqueue of "2" reads the group's head "0" while another
    node's ack of "0" is committing (and promoting "1"); "1" must not be able
    to finish before "2" is committed behind it."""
    producer, consumer = await node(), await node()
    await producer.create_queue("q", buckets=4)
    for body in (b"0", b"1"):
        await producer.enqueue("q", body, group="g")
    session = await consumer.open_session()
    (head,) = await consumer.receive(session, "q", max=5)
    acking, enqueuing = hold_ack(monkeypatch, head.id), hold_enqueue(monkeypatch, b"2")
    ack = asyncio.create_task(consumer.ack(head.id, head.token))
    await acking.reached()
    enqueue = asyncio.create_task(producer.enqueue("q", b"2", group="g"))
    await until(lambda: waited_on(pg_url, acking.pid), "the enqueue to wait for the ack")
    acking.release()
    await ack
    await enqueuing.reached()
    finished, acks = await finish_the_head(consumer, session, enqueuing, pg_url)
    enqueuing.release()
    await asyncio.gather(enqueue, *acks)
    await producer.enqueue("q", b"3", group="g")
    assert finished + await drain(consumer, session) == [b"1", b"2", b"3"]


async def test_a_member_that_loses_the_head_to_another_node_waits_behind_it(
    node: MakeNode, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes enqueue into an empty group at once: both would make a head,
    "a0" loses to "b0" (unique index) and queues behind it; "b0" must not be
    able to finish before "a0" is committed behind it."""
    a, b = await node(), await node()
    await a.create_queue("q", buckets=4)
    heading, queuing = hold_enqueue(monkeypatch, b"b0"), hold_enqueue(monkeypatch, b"a0")
    enqueue_b = asyncio.create_task(b.enqueue("q", b"b0", group="g"))
    await heading.reached()
    enqueue_a = asyncio.create_task(a.enqueue("q", b"a0", group="g"))
    await until(lambda: waited_on(pg_url, heading.pid), "a0's insert to wait for b0's")
    heading.release()
    await enqueue_b
    await queuing.reached()
    session = await b.open_session()
    finished, acks = await finish_the_head(b, session, queuing, pg_url)
    queuing.release()
    await asyncio.gather(enqueue_a, *acks)
    await a.enqueue("q", b"a1", group="g")
    assert finished + await drain(b, session) == [b"b0", b"a0", b"a1"]


async def test_a_dead_letter_redriven_as_a_head_is_made_waits_behind_it(
    node: MakeNode, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A redrive finds the group without a head, but another node's enqueue
    makes one before the redrive can lead: the redriven message queues behind
    it, and that head must not be able to finish before the redrive commits."""
    a, b = await node(), await node()
    await a.create_queue("q", buckets=4)
    await a.enqueue("q", b"d", group="g")
    session = await b.open_session()
    (dead,) = await b.receive(session, "q")
    await b.dead(dead.id, dead.token, "for the test")
    heading, redriving = hold_enqueue(monkeypatch, b"x"), hold_redrive(monkeypatch, dead.id)
    enqueue = asyncio.create_task(b.enqueue("q", b"x", group="g"))
    await heading.reached()
    redrive = asyncio.create_task(a.redrive("q"))
    await until(lambda: waited_on(pg_url, heading.pid), "the redrive to wait for x's insert")
    heading.release()
    await enqueue
    await redriving.reached()
    finished, acks = await finish_the_head(b, session, redriving, pg_url)
    redriving.release()
    await asyncio.gather(redrive, *acks)
    await a.enqueue("q", b"y", group="g")
    assert finished + await drain(b, session) == [b"x", b"d", b"y"]


async def test_groups_stay_in_order_under_enqueues_acks_and_nacks_on_three_nodes(
    node: MakeNode,
) -> None:
    """Everything at once, with no hook: three producers (one per node) each
    enqueue into two shared groups one message at a time, while a consumer
    on each node takes, acks and now and then nacks. A group never has two
    messages out, and each producer's messages of a group first come out in
    the order it enqueued them."""
    nodes = [await node() for _ in range(3)]
    await nodes[0].create_queue("q", buckets=8, max_attempts=100)
    per_producer, groups = 40, ["g0", "g1"]
    total = len(nodes) * per_producer * len(groups)
    held: dict[str, str] = {}  # group -> the id out now
    firsts: dict[str, list[tuple[int, int]]] = {g: [] for g in groups}  # (producer, n)
    seen: set[str] = set()
    acked = 0
    rng = random.Random(11)

    async def produce(index: int, broker: Broker) -> None:
        for n in range(per_producer):
            for g in groups:
                await broker.enqueue("q", f"{index} {n}".encode(), group=g)

    async def consume(broker: Broker) -> None:
        nonlocal acked
        session = await broker.open_session()
        deadline = time.monotonic() + 2 * WAIT
        while acked < total:
            assert time.monotonic() < deadline, f"{total - acked} messages never came out"
            out = await broker.receive(session, "q", max=4, wait=0.05)
            for d in out:
                assert d.group is not None
                assert held.setdefault(d.group, d.id) == d.id, f"{d.group}: two out at once"
                if d.id not in seen:
                    seen.add(d.id)
                    producer, n = map(int, d.body.split())
                    firsts[d.group].append((producer, n))
            await asyncio.sleep(0)
            for d in out:
                del held[d.group or ""]
                if rng.random() < 0.2:
                    await broker.nack(d.id, d.token, delay=0)
                else:
                    await broker.ack(d.id, d.token)
                    acked += 1

    await asyncio.gather(
        *(produce(i, b) for i, b in enumerate(nodes)), *(consume(b) for b in nodes)
    )
    for g, order in firsts.items():
        for producer in range(len(nodes)):
            mine = [n for p, n in order if p == producer]
            assert mine == list(range(per_producer)), f"{g}, producer {producer}: {mine}"
