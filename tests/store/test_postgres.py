"""What only the PostgreSQL store promises: schemas that keep installations
apart, migrations, and several broker nodes on one database: a message is
never leased to two of them, a change on one wakes consumers on another, any
node ends another's silent sessions, and a transaction held open elsewhere
does not stall claims.

Every test gets a fresh schema (``pg_url``); "nodes" are brokers on store
instances of their own over that schema, in this one process.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor.broker.broker import Broker, BrokerConfig
from conveyor.core.errors import InvalidArgument, LeaseLost, QueueNotFound, StoreError
from conveyor.core.types import NewMessage
from requires import require_module

asyncpg = require_module("asyncpg")  # skipped locally without it, failed under CI=true

from conveyor.store.postgres import migrate  # noqa: E402
from conveyor.store.postgres.options import parse_url  # noqa: E402
from conveyor.store.postgres.store import PostgresStore  # noqa: E402
from conveyor.store.sql import migrations, parse_queries  # noqa: E402

MakeNode = Callable[..., Awaitable[Broker]]


class FakeClock:
    """A node's clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def with_schema(url: str, schema: str) -> str:
    return url + ("&" if "?" in url else "?") + f"schema={schema}"


@pytest.fixture
def pg_url(postgres_url: str, postgres_schema: str) -> str:
    return with_schema(postgres_url, postgres_schema)


@pytest.fixture
async def node(pg_url: str) -> AsyncIterator[MakeNode]:
    """Starts broker nodes on the test's schema, each with its own clock;
    closes them all at the end."""
    started: list[Broker] = []

    async def start(url: str = pg_url, clock: FakeClock | None = None, **config: Any) -> Broker:
        broker = Broker(
            PostgresStore(url),
            BrokerConfig(**config),
            clock=clock or FakeClock(),
            monitor=False,
        )
        await broker.start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        await broker.close()


async def sql(url: str, query: str, *args: Any) -> list[Any]:
    """One query on a connection of its own, in the URL's schema."""
    options = parse_url(url)
    conn = await asyncpg.connect(options.dsn, server_settings={"search_path": options.schema})
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


# -- URLs, schemas, migrations ---------------------------------------------------------


def test_store_urls() -> None:
    options = parse_url("postgresql://u:secret@db:5433/q?schema=billing&pool_max=3&sslmode=prefer")
    assert options.schema == "billing"
    assert options.pool_max == 3
    assert options.dsn == "postgresql://u:secret@db:5433/q?sslmode=prefer"
    assert "secret" not in options.redacted
    assert parse_url("postgres://db/q").schema == "conveyor"
    assert parse_url("postgres://db/q?migrate=false").migrate is False
    for bad in ("Billing", "1x", "a-b", "x" * 64, "a;drop"):
        with pytest.raises(InvalidArgument, match="schema"):
            parse_url(f"postgresql://db/q?schema={bad}")
    with pytest.raises(InvalidArgument):
        parse_url("postgresql://db/q?pool_max=0")
    with pytest.raises(InvalidArgument):
        parse_url("sqlite:///x.db")


async def test_schemas_keep_installations_apart(
    node: MakeNode, postgres_url: str, postgres_schema: str
) -> None:
    other_schema = postgres_schema + "_b"
    try:
        a = await node()
        b = await node(with_schema(postgres_url, other_schema))
        await a.create_queue("orders")
        await a.enqueue("orders", b"in a")
        with pytest.raises(QueueNotFound):
            await b.get_queue("orders")
        await b.create_queue("orders", visibility_timeout=5)
        await b.enqueue("orders", b"in b")
        session_b = await b.open_session()
        (got,) = await b.receive(session_b, "orders", max=10)
        assert got.body == b"in b"
        assert (await a.stats("orders")).ready == 1
        assert (await a.get_queue("orders")).visibility_timeout == 30
    finally:
        await sql(postgres_url, f'DROP SCHEMA IF EXISTS "{other_schema}" CASCADE')


async def test_migrations_are_idempotent_and_concurrent_opens_migrate_once(pg_url: str) -> None:
    options = parse_url(pg_url)
    conns = [await asyncpg.connect(options.dsn) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate.migrate(c, options.schema) for c in conns))
        assert sorted(applied) == [[], [], [], list(range(1, migrate.latest() + 1))]
        assert await migrate.migrate(conns[0], options.schema) == []
        assert await migrate.version(conns[0], options.schema) == migrate.latest()
    finally:
        for c in conns:
            await c.close()


async def test_the_migrated_schema_is_the_one_the_migrations_describe(
    pg_url: str, postgres_url: str, postgres_schema: str
) -> None:
    """A schema brought up by ``migrate`` equals one made by running the
    numbered files in order, by hand."""
    found = migrations("conveyor.store.postgres.migrations")
    assert [n for n, _ in found] == list(range(1, len(found) + 1))
    store = PostgresStore(pg_url)
    await store.open()
    await store.close()
    fresh = postgres_schema + "_fresh"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{fresh}"; SET search_path TO "{fresh}"')
        for _, script in found:
            await conn.execute(script)
        migrated = await _catalog(conn, postgres_schema)
        assert migrated == await _catalog(conn, fresh)
        assert len(migrated) > 30
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{fresh}" CASCADE')
        await conn.close()


async def _catalog(conn: Any, schema: str) -> list[tuple[str, ...]]:
    """Tables, columns, indexes, sequences and functions of a schema, with
    the schema's name taken out."""
    rows = await conn.fetch(
        """
        SELECT 'column', c.table_name, c.column_name,
               c.data_type || coalesce(c.column_default, '') || c.is_nullable
        FROM information_schema.columns AS c
        WHERE c.table_schema = $1 AND c.table_name <> 'schema_migrations'
        UNION ALL
        SELECT 'index', i.tablename, i.indexname, i.indexdef FROM pg_indexes AS i
        WHERE i.schemaname = $1 AND i.tablename <> 'schema_migrations'
        UNION ALL
        SELECT 'sequence', s.sequence_name, '', s.start_value FROM information_schema.sequences AS s
        WHERE s.sequence_schema = $1
        UNION ALL
        SELECT 'function', p.proname, '', pg_get_function_arguments(p.oid)
        FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace WHERE n.nspname = $1
        UNION ALL
        SELECT 'options', c.relname, '', coalesce(array_to_string(c.reloptions, ','), '')
        FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname <> 'schema_migrations'
        """,
        schema,
    )
    return sorted(tuple(str(v).replace(schema, "<schema>") for v in row) for row in rows)


async def test_a_node_with_migrate_false_refuses_an_old_schema(pg_url: str) -> None:
    with pytest.raises(StoreError, match="conveyor migrate"):
        await PostgresStore(pg_url + "&migrate=false").open()
    _, applied = await migrate.migrate_url(pg_url)
    assert applied == list(range(1, migrate.latest() + 1))
    store = PostgresStore(pg_url + "&migrate=false")
    await store.open()
    await store.close()


async def test_every_named_query_is_plain_sql(pg_url: str) -> None:
    text = (Path(__file__).parents[2] / "src/conveyor/store/postgres/queries.sql").read_text()
    queries = parse_queries(text)
    await migrate.migrate_url(pg_url)
    options = parse_url(pg_url)
    conn = await asyncpg.connect(options.dsn, server_settings={"search_path": options.schema})
    try:
        for name, query in queries.items():
            assert "{" not in query, name
            await conn.prepare(query)  # parses and plans, runs nothing
    finally:
        await conn.close()


async def test_the_migrate_command(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from conveyor.cli import main

    assert await asyncio.to_thread(main, ["migrate", "--store", pg_url]) == 0
    assert await asyncio.to_thread(main, ["migrate", "--store", pg_url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("migrations applied: 1")
    assert out[1].endswith("up to date")


def test_service_and_client_urls_open_a_postgres_store(pg_url: str) -> None:
    from conveyor.client.urls import open_transport
    from conveyor.server.service import ServiceOptions, open_store

    assert isinstance(open_store(ServiceOptions(store_url=pg_url)), PostgresStore)
    transport = open_transport(pg_url)
    assert isinstance(transport.broker.store, PostgresStore)


async def test_an_embedded_client_on_postgres(pg_url: str) -> None:
    from conveyor.client.aio import AsyncClient

    async with AsyncClient(pg_url) as client:
        await client.create_queue("jobs")
        sent = await client.enqueue("jobs", b"x")
        (got,) = await client.receive("jobs")
        assert got.id == sent.id
        await got.ack()


# -- several nodes on one database --------------------------------------------------


async def test_two_nodes_never_lease_one_message_twice(node: MakeNode) -> None:
    a, b = await node(), await node()
    await a.create_queue("q", visibility_timeout=300)
    total = 600
    for start in range(0, total, 200):
        await a.enqueue_many(
            "q", [NewMessage(body=str(i).encode()) for i in range(start, start + 200)]
        )
    got: list[tuple[str, str]] = []

    async def consume(broker: Broker, name: str) -> None:
        session = await broker.open_session(name)
        while True:
            deliveries = await broker.receive(session, "q", max=7)
            if not deliveries:
                return
            got.extend((d.id, name) for d in deliveries)

    await asyncio.gather(*(consume(x, f"{i}") for i, x in enumerate([a, b] * 4)))
    counts = Counter(i for i, _ in got)
    assert len(counts) == total
    assert max(counts.values()) == 1
    assert {n for _, n in got} == {str(i) for i in range(8)}  # every consumer had a share


async def test_one_group_stays_in_order_and_exclusive_across_nodes(node: MakeNode) -> None:
    """Two nodes enqueue into one group at once; at most one message of the
    group is ever out, and each node's messages come out in its order."""
    clock = FakeClock()  # clocks in step, as nodes' must be (NTP)
    a, b = await node(clock=clock), await node(clock=clock)
    await a.create_queue("q", buckets=4)

    async def produce(broker: Broker, tag: str) -> None:
        for i in range(40):
            await broker.enqueue("q", f"{tag}{i}".encode(), group="g")

    await asyncio.gather(produce(a, "a"), produce(b, "b"))
    assert (await a.stats("q")).ready == 80
    sessions = [(a, await a.open_session()), (b, await b.open_session())]
    order: list[str] = []
    while len(order) < 80:
        out = []
        for broker, session in sessions:
            out += [(broker, d) for d in await broker.receive(session, "q", max=5)]
        assert len(out) == 1  # the group's head, and nothing behind it
        broker, d = out[0]
        order.append(d.body.decode())
        await broker.ack(d.id, d.token)
    for tag in "ab":
        mine = [int(x[1:]) for x in order if x[0] == tag]
        assert mine == list(range(40))


async def test_a_dedup_key_sent_to_two_nodes_at_once_stores_one_message(node: MakeNode) -> None:
    a, b = await node(), await node()
    await a.create_queue("q")
    for round_ in range(10):
        results = await asyncio.gather(
            *(x.enqueue("q", b"x", dedup_key=f"k{round_}") for x in [a, b, a, b])
        )
        assert len({r.id for r in results}) == 1
        assert sorted(r.duplicate for r in results) == [False, True, True, True]
    assert (await a.stats("q")).ready == 10


async def test_max_length_holds_across_nodes(node: MakeNode) -> None:
    a, b = await node(), await node()
    await a.create_queue("q", max_length=25)
    outcomes = await asyncio.gather(
        *(x.enqueue("q", b"x") for x in [a, b] * 20), return_exceptions=True
    )
    assert sum(1 for o in outcomes if not isinstance(o, BaseException)) == 25
    assert (await b.stats("q")).ready == 25


async def test_a_change_on_one_node_wakes_a_waiter_on_another(node: MakeNode) -> None:
    a, b = await node(), await node()
    await a.create_queue("q")
    notified = asyncio.Event()
    original = b.store._wake  # type: ignore[attr-defined]

    def wake(queue: str) -> None:
        if queue == "q":
            notified.set()
        original(queue)

    b.store.set_waker(wake)
    session = await b.open_session()
    waiting = asyncio.create_task(b.receive(session, "q", wait=20))
    await asyncio.sleep(0.1)
    sent = await a.enqueue("q", b"hello")
    await asyncio.wait_for(notified.wait(), 10)  # by NOTIFY, not by polling
    (got,) = await asyncio.wait_for(waiting, 10)
    assert got.id == sent.id
    assert b.store.metrics()["notifications_received_total"] >= 1


async def test_a_receive_sees_at_once_what_another_node_just_committed(node: MakeNode) -> None:
    """A session that just found its queue empty asks again at its next
    receive (on one node it would wait for a change it hears of): another
    node's enqueue is seen before its NOTIFY arrives."""
    a, b = await node(), await node()
    await a.create_queue("q")
    session = await b.open_session()
    b.store.set_waker(lambda queue: None)  # no NOTIFY reaches b
    assert await b.receive(session, "q", max=5) == []
    sent = await a.enqueue("q", b"x")
    got = await b.receive(session, "q", max=5)
    assert [d.id for d in got] == [sent.id]


async def test_a_queue_deleted_and_made_again_on_another_node_is_consumed_here(
    node: MakeNode,
) -> None:
    """A session of node A consumes a queue; node B deletes it and creates it
    again: A's session is a consumer of the new queue (it owns its groups'
    buckets) without reconnecting."""
    a, b = await node(), await node()
    await a.create_queue("q")
    session = await a.open_session()
    assert await a.receive(session, "q") == []
    await b.delete_queue("q")
    await b.create_queue("q")
    sent = await b.enqueue("q", b"grouped", group="g")
    got = await a.receive(session, "q", wait=5)
    assert [d.id for d in got] == [sent.id]


async def test_the_listener_comes_back_after_its_connection_is_killed(node: MakeNode) -> None:
    a, b = await node(), await node()
    await a.create_queue("q")
    listener = b.store._listener  # type: ignore[attr-defined]
    pid = listener._conn.get_server_pid()
    await sql(a.store.options.dsn, "SELECT pg_terminate_backend($1)", pid)  # type: ignore[attr-defined]
    deadline = time.monotonic() + 15
    while b.store.metrics()["listener_reconnects_total"] < 1:
        assert time.monotonic() < deadline, "the listener did not reconnect"
        await asyncio.sleep(0.05)
    before = b.store.metrics()["notifications_received_total"]
    await a.enqueue("q", b"x")
    while b.store.metrics()["notifications_received_total"] == before:
        assert time.monotonic() < deadline, "no notification after the reconnect"
        await asyncio.sleep(0.05)


async def test_opening_a_node_releases_no_other_nodes_lease(node: MakeNode) -> None:
    a = await node()
    await a.create_queue("q")
    await a.enqueue("q", b"x")
    session = await a.open_session()
    (held,) = await a.receive(session, "q")
    b = await node()  # a new node (or a restarted one) opens the same schema
    assert await b.receive(await b.open_session(), "q") == []
    assert (await b.stats("q")).leased == 1
    await a.ack(held.id, held.token)


async def test_a_silent_session_of_one_node_is_ended_by_another(node: MakeNode) -> None:
    """Node A dies with a lease (its session stops heartbeating); node B's
    lease monitor ends the session and the message goes to B's consumer."""
    clock_a, clock_b = FakeClock(), FakeClock()
    a = await node(clock=clock_a)
    b = await node(clock=clock_b)
    await a.create_queue("q", visibility_timeout=600)
    await a.enqueue("q", b"x")
    dead_session = await a.open_session(timeout=5)
    (held,) = await a.receive(dead_session, "q")
    assert (await b.sweep_once()).sessions_expired == []
    clock_b.advance(6)
    swept = await b.sweep_once()
    assert swept.sessions_expired == [dead_session]
    assert swept.woken == ["q"]
    (again,) = await b.receive(await b.open_session(), "q")
    assert again.id == held.id and again.token > held.token
    with pytest.raises(LeaseLost):
        await a.ack(held.id, held.token)
    await b.ack(again.id, again.token)
    stats = await a.stats("q")
    assert (stats.ready, stats.leased, stats.lease_expired_total) == (0, 0, 1)


async def test_two_monitors_never_release_one_lease_twice(node: MakeNode) -> None:
    clock = FakeClock()
    nodes = [await node(clock=clock) for _ in range(3)]
    await nodes[0].create_queue("q", visibility_timeout=1, max_attempts=100)
    await nodes[0].enqueue_many("q", [NewMessage(body=b"x")] * 300)
    session = await nodes[0].open_session(timeout=1e6)
    assert len(await nodes[0].receive(session, "q", max=300)) == 300
    clock.advance(2)
    swept = await asyncio.gather(*(n.sweep_once() for n in nodes * 2))
    assert sum(s.leases_expired for s in swept) == 300
    stats = await nodes[1].stats("q")
    assert (stats.ready, stats.leased, stats.lease_expired_total) == (300, 0, 300)


async def test_tokens_keep_growing_across_nodes_and_reopens(node: MakeNode, pg_url: str) -> None:
    a = await node()
    await a.create_queue("q", max_attempts=100)
    await a.enqueue("q", b"x")
    tokens = []
    for _ in range(3):
        b = await node()  # a new epoch: its tokens start above every earlier one
        for broker in (a, b):
            session = await broker.open_session()
            (d,) = await broker.receive(session, "q")
            tokens.append(d.token)
            await broker.close_session(session)
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


# -- churn and held transactions --------------------------------------------------------


async def test_acked_messages_leave_the_table_and_counters_fold(
    node: MakeNode, pg_url: str
) -> None:
    clock = FakeClock()
    a = await node(clock=clock)
    await a.create_queue("q")
    session = await a.open_session()
    for _ in range(50):
        await a.enqueue_many("q", [NewMessage(body=b"x")] * 4)
        for d in await a.receive(session, "q", max=4):
            await a.ack(d.id, d.token)
    assert await sql(pg_url, "SELECT count(*) FROM messages") == [(0,)]
    before = await a.stats("q")
    (rows,) = await sql(pg_url, "SELECT count(*) FROM queue_counts")
    assert rows[0] > 100
    clock.advance(2)
    await a.sweep_once()  # housekeeping folds the per-transaction deltas
    assert await sql(pg_url, "SELECT count(*) FROM queue_counts") == [(1,)]
    assert await a.stats("q") == before
    assert (before.enqueued_total, before.delivered_total, before.acked_total) == (200, 200, 200)


async def test_the_lease_monitor_vacuums_the_churning_tables(node: MakeNode, pg_url: str) -> None:
    a = await node(pg_url + "&vacuum_every=0.01")
    await a.create_queue("q")
    await asyncio.sleep(0.02)
    await a.sweep_once()
    deadline = time.monotonic() + 30
    while a.store.metrics()["vacuums_total"] < 1:
        assert time.monotonic() < deadline, "no VACUUM ran"
        await asyncio.sleep(0.05)
    (vacuumed,) = await sql(
        pg_url,
        "SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables"
        " WHERE schemaname = current_schema() AND relname = 'messages'",
    )
    assert vacuumed[0]


async def test_a_transaction_held_open_elsewhere_does_not_stall_claims(
    node: MakeNode, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another client holds a transaction open with a lock on the first
    ready message and an update of the queue's row. Claims skip the locked
    row instead of waiting for it, enqueues and acks go on, and once the
    transaction ends the row is delivered too. (The claim's latency is
    printed, not asserted: this suite asserts no timings.)"""
    a = await node()
    await a.create_queue("q")
    first = await a.enqueue("q", b"first")
    await a.enqueue_many("q", [NewMessage(body=b"next")] * 20)
    options = parse_url(pg_url)
    holder = await asyncpg.connect(options.dsn, server_settings={"search_path": options.schema})
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(
            "SELECT * FROM messages WHERE seq = (SELECT min(seq) FROM messages) FOR UPDATE"
        )
        await holder.execute("UPDATE queues SET config = config WHERE name = 'q'")
        session = await a.open_session()
        timings = []
        for _ in range(20):
            started = time.perf_counter()
            (d,) = await asyncio.wait_for(a.receive(session, "q"), 10)
            timings.append(time.perf_counter() - started)
            assert d.id != first.id
            await asyncio.wait_for(a.ack(d.id, d.token), 10)
        await asyncio.wait_for(a.enqueue("q", b"more"), 10)
        await tx.rollback()
    finally:
        await holder.close()
    got = await a.receive(session, "q", max=10)
    assert got[0].id == first.id
    timings.sort()
    with capsys.disabled():
        print(
            f"\nclaims while a transaction holds a lock: median {timings[10] * 1000:.2f} ms,"
            f" max {timings[-1] * 1000:.2f} ms"
        )


async def test_concurrent_callers_share_commits(node: MakeNode) -> None:
    a = await node()
    await a.create_queue("q")
    before = a.store.metrics()
    await asyncio.gather(*(a.enqueue("q", b"x") for _ in range(200)))
    after = a.store.metrics()
    commits = after["commits_total"] - before["commits_total"]
    operations = after["commit_operations_total"] - before["commit_operations_total"]
    assert operations == 200
    assert commits <= 20  # group commit: many callers per transaction
