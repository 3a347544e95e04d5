"""Throughput of the in-process broker: enqueue in batches, then claim + ack.

    python bench/inprocess.py --messages 200000 --batch 100 --durability fsync

Runs producers and consumers concurrently on one event loop against a
SqliteStore in a temporary directory, and prints messages/s for the enqueue
phase alone, the drain phase alone (receive + ack_many), and both at once;
between the first two, what one ``stats`` call costs with the queue full.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from conveyor.broker.broker import Broker
from conveyor.core.types import Ack, NewMessage
from conveyor.store.sqlite.store import SqliteStore

STATS_CALLS = 20


def progress(label: str, done: int, total: int) -> None:
    print(f"\r  {label}: {done:>9,}/{total:,}", end="", file=sys.stderr, flush=True)


async def produce(broker: Broker, queue: str, count: int, batch: int, counter: list[int]) -> None:
    body = b'{"payload": "' + b"x" * 100 + b'"}'
    items = [NewMessage(body=body) for _ in range(batch)]
    sent = 0
    while sent < count:
        n = min(batch, count - sent)
        await broker.enqueue_many(queue, items[:n])
        sent += n
        counter[0] += n


async def consume(broker: Broker, queue: str, total: int, batch: int, counter: list[int]) -> None:
    session = await broker.open_session("bench", capacity=batch)
    while counter[0] < total:
        got = await broker.receive(session, queue, max=batch, wait=0.05)
        if got:
            await broker.ack_many([Ack(d.id, d.token) for d in got])
            counter[0] += len(got)
    await broker.close_session(session)


async def report(label: str, counter: list[int], total: int) -> None:
    while True:
        progress(label, counter[0], total)
        await asyncio.sleep(0.5)


async def phase(
    label: str, tasks: list[asyncio.Future[None]], counter: list[int], total: int
) -> float:
    start = time.perf_counter()
    reporter = asyncio.ensure_future(report(label, counter, total))
    await asyncio.gather(*tasks)
    took = time.perf_counter() - start
    reporter.cancel()
    progress(label, counter[0], total)
    print(file=sys.stderr)
    return took


async def run(args: argparse.Namespace, data: Path) -> None:
    path = None if args.durability == "memory" else data / "bench.db"
    broker = Broker(SqliteStore(path, durability=args.durability))
    await broker.start()
    n, b, p = args.messages, args.batch, args.parallel
    per = n // p
    total = per * p
    try:
        await broker.create_queue("bench")
        sent = [0]
        t = await phase(
            "enqueue",
            [asyncio.ensure_future(produce(broker, "bench", per, b, sent)) for _ in range(p)],
            sent,
            total,
        )
        print(f"enqueue (batches of {b}, {p} producers): {total / t:,.0f} msgs/s")
        start = time.perf_counter()
        for _ in range(STATS_CALLS):
            await broker.stats("bench")
        took = (time.perf_counter() - start) / STATS_CALLS
        print(f"stats of the queue holding {total:,} messages: {took * 1000:.2f} ms per call")
        done = [0]
        t = await phase(
            "claim+ack",
            [asyncio.ensure_future(consume(broker, "bench", total, b, done)) for _ in range(p)],
            done,
            total,
        )
        print(f"claim+ack (batches of {b}, {p} consumers): {total / t:,.0f} msgs/s")
        sent, done = [0], [0]
        t = await phase(
            "enqueue+claim+ack",
            [asyncio.ensure_future(produce(broker, "bench", per, b, sent)) for _ in range(p)]
            + [asyncio.ensure_future(consume(broker, "bench", total, b, done)) for _ in range(p)],
            done,
            total,
        )
        print(f"enqueue+claim+ack together: {total / t:,.0f} msgs/s end to end")
        w = broker.store.writer if isinstance(broker.store, SqliteStore) else None
        if w is not None and w.commits:
            per_commit = w.operations / w.commits
            commit_ms = 1000 * w.commit_seconds / w.commits
            print(
                f"group commit: {w.commits:,} commits, {per_commit:.1f} operations per commit,"
                f" {commit_ms:.2f} ms per COMMIT"
            )
    finally:
        await broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=4, help="producers and consumers each")
    parser.add_argument("--durability", choices=("fsync", "os", "memory"), default="fsync")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the database goes (default: a temp dir)"
    )
    args = parser.parse_args()
    print(
        f"durability={args.durability} messages={args.messages:,} python={sys.version.split()[0]}"
    )
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(run(args, args.dir))
    else:
        with tempfile.TemporaryDirectory(dir=".") as tmp:
            asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
