"""The PostgreSQL store alone: throughput with one or more nodes, and what a
transaction held open elsewhere does to claims under churn.

    python bench/postgres_store.py throughput --nodes 2 --messages 20000 --batch 100
    python bench/postgres_store.py held-tx --messages 30000

``throughput``: ``--nodes`` brokers (store instances of one schema, in this
process), each with ``--parallel`` producers and consumers; prints messages/s
of the enqueue phase, of the drain phase (receive + ack_many), and of both at
once. ``held-tx``: the same churn four times on fresh schemas: alone; while
another connection holds a transaction open (a REPEATABLE READ snapshot,
which keeps every row version since its start from being cleaned up); while
another holds row locks on ready messages; and while a snapshot is held in
another database of the same server (``postgres``). Prints claim latency per
slice of the churn and the dead row versions and sizes of the messages table.
Each run uses a schema of its own (``bench_pg_<random>``), dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from conveyor.broker.broker import Broker
from conveyor.core.types import Ack, NewMessage
from conveyor.store.postgres.store import PostgresStore

BODY = b'{"payload": "' + b"x" * 100 + b'"}'


def with_schema(url: str, schema: str) -> str:
    return url + ("&" if "?" in url else "?") + f"schema={schema}"


async def drop(url: str, schema: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def produce(broker: Broker, count: int, batch: int) -> None:
    sent = 0
    while sent < count:
        n = min(batch, count - sent)
        if n == 1:
            await broker.enqueue("q", BODY)
        else:
            await broker.enqueue_many("q", [NewMessage(body=BODY)] * n)
        sent += n


async def consume(broker: Broker, done: list[int], total: int, batch: int) -> list[float]:
    """Receive and ack until ``total`` are done; the latency of each receive."""
    session = await broker.open_session("bench", capacity=batch)
    latencies = []
    while done[0] < total:
        started = time.perf_counter()
        got = await broker.receive(session, "q", max=batch, wait=0.05)
        if got:
            latencies.append(time.perf_counter() - started)
            await broker.ack_many([Ack(d.id, d.token) for d in got])
            done[0] += len(got)
    await broker.close_session(session)
    return latencies


async def throughput(args: argparse.Namespace) -> None:
    schema = f"bench_pg_{secrets.token_hex(4)}"
    url = with_schema(args.url, schema)
    brokers = [Broker(PostgresStore(url)) for _ in range(args.nodes)]
    try:
        for b in brokers:
            await b.start()
        await brokers[0].create_queue("q")
        per = args.messages // (args.nodes * args.parallel)
        total = per * args.nodes * args.parallel
        started = time.perf_counter()
        await asyncio.gather(
            *(produce(b, per, args.batch) for b in brokers for _ in range(args.parallel))
        )
        enqueue_rate = total / (time.perf_counter() - started)
        done = [0]
        started = time.perf_counter()
        await asyncio.gather(
            *(consume(b, done, total, args.receive) for b in brokers for _ in range(args.parallel))
        )
        drain_rate = total / (time.perf_counter() - started)
        done = [0]
        started = time.perf_counter()
        await asyncio.gather(
            *(produce(b, per, args.batch) for b in brokers for _ in range(args.parallel)),
            *(consume(b, done, total, args.receive) for b in brokers for _ in range(args.parallel)),
        )
        both_rate = total / (time.perf_counter() - started)
        commits = sum(b.store.metrics()["commits_total"] for b in brokers)
        operations = sum(b.store.metrics()["commit_operations_total"] for b in brokers)
        print(
            f"nodes={args.nodes} parallel={args.parallel} batch={args.batch}"
            f" receive={args.receive} messages={total}: enqueue {enqueue_rate:,.0f}/s,"
            f" drain {drain_rate:,.0f}/s, both at once {both_rate:,.0f}/s;"
            f" {operations / max(commits, 1):.1f} operations per group commit"
        )
    finally:
        for b in brokers:
            await b.close()
        await drop(args.url, schema)


async def table_figures(url: str, schema: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            """SELECT n_live_tup, n_dead_tup,
                      pg_relation_size(relid) AS heap,
                      pg_indexes_size(relid) AS indexes
               FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'messages'""",
            schema,
        )
        return dict(row)
    finally:
        await conn.close()


async def churn_once(args: argparse.Namespace, hold: str) -> None:
    schema = f"bench_pg_{secrets.token_hex(4)}"
    url = with_schema(args.url, schema)
    broker = Broker(PostgresStore(url))
    holder = None
    try:
        await broker.start()
        await broker.create_queue("q")
        await produce(broker, 2_000, 100)  # a standing backlog
        holder = await asyncpg.connect(args.url, server_settings={"search_path": schema})
        if hold == "snapshot in another database":
            await holder.close()
            other = args.url.rsplit("/", 1)[0] + "/postgres"
            holder = await asyncpg.connect(other)
            tx = holder.transaction(isolation="repeatable_read")
            await tx.start()
            await holder.fetch("SELECT count(*) FROM pg_class")
        elif hold == "snapshot":
            tx = holder.transaction(isolation="repeatable_read")
            await tx.start()
            await holder.fetch("SELECT count(*) FROM messages")
        elif hold == "row locks":
            tx = holder.transaction()
            await tx.start()
            await holder.fetch(
                "SELECT seq FROM messages WHERE state = 0 ORDER BY priority DESC, available_at,"
                " seq LIMIT 100 FOR UPDATE"
            )
        slices = []
        started = time.perf_counter()
        for i in range(args.messages // args.slice):
            done = [0]
            t0 = time.perf_counter()
            _, *latencies = await asyncio.gather(
                produce(broker, args.slice, 100),
                *(consume(broker, done, args.slice, 10) for _ in range(4)),
            )
            took = time.perf_counter() - t0
            flat = sorted(x for group in latencies for x in group)
            slices.append(
                (
                    (i + 1) * args.slice,
                    args.slice / took,
                    statistics.median(flat) * 1000,
                    flat[int(len(flat) * 0.99)] * 1000,
                )
            )
        elapsed = time.perf_counter() - started
        figures = await table_figures(args.url, schema)
        print(f"\n== churn with {hold or 'nothing'} held open ({elapsed:.1f} s) ==")
        for n, rate, p50, p99 in slices:
            print(
                f"  after {n:>7,}: {rate:>7,.0f} msg/s, claim p50 {p50:6.2f} ms p99 {p99:6.2f} ms"
            )
        print(
            f"  messages table: {figures['n_live_tup']:,} live, {figures['n_dead_tup']:,} dead"
            f" row versions, heap {figures['heap'] / 2**20:.1f} MiB,"
            f" indexes {figures['indexes'] / 2**20:.1f} MiB"
        )
    finally:
        if holder is not None:
            await holder.close()
        await broker.close()
        await drop(args.url, schema)


async def held_tx(args: argparse.Namespace) -> None:
    for hold in ("", "snapshot", "row locks", "snapshot in another database"):
        await churn_once(args, hold)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("throughput", "held-tx"))
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=4, help="producers and consumers each")
    parser.add_argument("--batch", type=int, default=100, help="messages per enqueue call")
    parser.add_argument("--receive", type=int, default=10, help="messages per receive")
    parser.add_argument("--slice", type=int, default=5_000, help="held-tx: messages per slice")
    args = parser.parse_args()
    run = throughput if args.what == "throughput" else held_tx
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
