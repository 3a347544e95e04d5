"""Conveyor over loopback: a real `conveyor serve` process, one producer and
one consumer (AsyncClient, the native protocol).

    python bench/network.py --durability fsync
    python bench/network.py --store postgresql://postgres@127.0.0.1:5432/test --nodes 2

With ``--store postgresql://...`` the servers run on a fresh schema of that
database (dropped at the end); with ``--nodes 2`` two servers share it, the
producer talks to the first and the consumer to the second, so every
delivery crosses nodes (a NOTIFY wakes the consumer's node).

Prints, one line each: enqueue msgs/s with single calls one at a time (the
AsyncClient, then the sync Client with the CPU per call), with single calls
pipelined, with batches of 100 (8 in flight), and with batches
of 100 one at a time (and the CPU each side spent per message); end-to-end
msgs/s (producer batches, consumer with prefetch acking each delivery);
enqueue-to-delivery latency p50/p99/max at a steady 500 msgs/s, with the CPU
time the servers spent per message meanwhile (utime + stime from /proc). The
server runs in its own process; this script's process holds both clients.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import conveyor
from conveyor.client.aio import AsyncClient
from runner.processes import cpu_seconds  # bench/ is on sys.path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(store: list[str], durability: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "conveyor", "serve", *store, "--port", str(port),
           "--http-port", "-1", "--durability", durability, "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"conveyor://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with {proc.returncode}") from None
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the server did not start")


def say(text: str) -> None:
    print(text, flush=True)


def progress(label: str, done: int, total: int) -> None:
    print(f"\r  {label}: {done:,}/{total:,}", end="", file=sys.stderr, flush=True)


async def enqueue_serial(client: AsyncClient, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        await client.enqueue("bench", b"x" * 100)
        if i % 1000 == 0:
            progress("serial enqueue", i, n)
    print(file=sys.stderr)
    return n / (time.perf_counter() - start)


def enqueue_serial_sync(
    url: str, n: int, servers_cpu: Callable[[], float]
) -> tuple[float, float, float]:
    """The sync Client's single calls (``task.delay``'s path): msgs/s, and
    the servers' and this thread's CPU per call, in us."""
    with conveyor.Client(url) as client:
        client.enqueue("bench", b"x" * 100)  # connected before the clock starts
        server, mine, start = servers_cpu(), time.thread_time(), time.perf_counter()
        for i in range(n):
            client.enqueue("bench", b"x" * 100)
            if i % 1000 == 0:
                progress("serial enqueue, sync Client", i, n)
        took = time.perf_counter() - start
        server, mine = servers_cpu() - server, time.thread_time() - mine
    print(file=sys.stderr)
    return n / took, 1e6 * server / n, 1e6 * mine / n


async def enqueue_pipelined(client: AsyncClient, n: int, window: int = 256) -> float:
    start = time.perf_counter()
    sem = asyncio.Semaphore(window)

    async def one() -> None:
        async with sem:
            await client.enqueue("bench", b"x" * 100)

    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - start)


async def enqueue_batched(client: AsyncClient, n: int, batch: int = 100, window: int = 8) -> float:
    body = b"x" * 100
    items = [body] * batch
    sem = asyncio.Semaphore(window)

    async def one() -> None:
        async with sem:
            await client.enqueue_many("bench", items)

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n // batch)))
    return n / (time.perf_counter() - start)


async def drain(client: AsyncClient, n: int, prefetch: int) -> None:
    done = 0
    pending: set[asyncio.Task[None]] = set()
    async for d in client.consume("bench", prefetch=prefetch):
        task = asyncio.ensure_future(d.ack())
        pending.add(task)
        task.add_done_callback(pending.discard)
        done += 1
        if done % 5000 == 0:
            progress("end to end", done, n)
        if done >= n:
            break
    await asyncio.gather(*pending)
    print(file=sys.stderr)


async def end_to_end(producer: AsyncClient, consumer: AsyncClient, n: int) -> float:
    start = time.perf_counter()
    await asyncio.gather(enqueue_batched(producer, n), drain(consumer, n, prefetch=1000))
    return n / (time.perf_counter() - start)


async def latency(
    producer: AsyncClient, consumer: AsyncClient, rate: int, seconds: float
) -> list[float]:
    n = int(rate * seconds)
    samples: list[float] = []

    async def consume() -> None:
        # Acks run beside the next deliveries, as a worker's do: a consumer
        # that waited for each would measure its own ack round trip instead.
        acks: set[asyncio.Task[None]] = set()
        async for d in consumer.consume("latency", prefetch=100):
            samples.append(time.time() - float(d.body))
            ack = asyncio.ensure_future(d.ack())
            acks.add(ack)
            ack.add_done_callback(acks.discard)
            if len(samples) >= n:
                break
        await asyncio.gather(*acks)

    sent: set[asyncio.Future[object]] = set()

    async def produce() -> None:
        start = time.perf_counter()
        for i in range(n):
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(producer.enqueue("latency", repr(time.time()).encode()))
            sent.add(task)
            task.add_done_callback(sent.discard)
            if i % rate == 0:
                progress("latency", i, n)
        print(file=sys.stderr)

    await asyncio.gather(consume(), produce())
    return samples


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def run(args: argparse.Namespace, urls: list[str], pids: list[int]) -> None:
    producer_url, consumer_url = urls[0], urls[-1]

    def servers_cpu() -> float:
        return sum(map(cpu_seconds, pids))

    async with AsyncClient(producer_url) as producer, AsyncClient(consumer_url) as consumer:
        await producer.create_queue("bench")
        await producer.create_queue("latency")
        serial = await enqueue_serial(producer, args.serial)
        say(f"enqueue, single calls one at a time: {serial:,.0f} msgs/s")
        rate, server_us, client_us = await asyncio.to_thread(
            enqueue_serial_sync, producer_url, args.serial, servers_cpu
        )
        say(
            f"enqueue, single calls one at a time, sync Client (task.delay's path):"
            f" {rate:,.0f} msgs/s; CPU per call: server {server_us:.0f} us,"
            f" client {client_us:.0f} us"
        )
        await producer.purge("bench")
        rate = await enqueue_pipelined(producer, args.messages)
        say(f"enqueue, single calls pipelined (256 in flight): {rate:,.0f} msgs/s")
        await producer.purge("bench")
        batched = await enqueue_batched(producer, args.messages * 5)
        say(f"enqueue, batches of 100 (8 in flight): {batched:,.0f} msgs/s")
        await producer.purge("bench")
        n = args.messages * 5
        server, client = servers_cpu(), time.process_time()
        batched = await enqueue_batched(producer, n, window=1)
        server, client = servers_cpu() - server, time.process_time() - client
        say(
            f"enqueue, batches of 100 one at a time (W1b's shape): {batched:,.0f} msgs/s;"
            f" CPU per message: server {1e6 * server / n:.1f} us, client {1e6 * client / n:.1f} us"
        )
        await producer.purge("bench")
        e2e = await end_to_end(producer, consumer, args.messages * 2)
        say(f"end to end (batched producer, consumer prefetch 1000): {e2e:,.0f} msgs/s")
        cpu = servers_cpu()
        samples = await latency(producer, consumer, args.rate, args.seconds)
        cpu = servers_cpu() - cpu
        ms = [s * 1000 for s in samples]
        say(
            f"enqueue-to-delivery latency at {args.rate}/s for {args.seconds:g}s:"
            f" p50 {pct(ms, 50):.2f} ms, p99 {pct(ms, 99):.2f} ms, max {max(ms):.2f} ms"
            f" (mean {statistics.mean(ms):.2f}); server CPU {1e6 * cpu / len(samples):,.0f}"
            " us/message"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--durability", choices=("fsync", "os", "memory"), default="fsync")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--serial", type=int, default=3_000)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--store", help="postgresql://... (default: an embedded SQLite store in a temporary dir)"
    )
    parser.add_argument("--nodes", type=int, default=1, help="servers on one PostgreSQL store")
    args = parser.parse_args()
    if args.nodes < 1 or (args.nodes > 1 and not args.store):
        parser.error("--nodes above 1 needs --store postgresql://...")
    store = "sqlite" if not args.store else f"postgresql, {args.nodes} node(s)"
    say(
        f"store={store} durability={args.durability} cores={os.cpu_count()}"
        f" python={sys.version.split()[0]}"
    )
    schema = f"bench_net_{secrets.token_hex(4)}"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        if args.store:
            from postgres_store import drop, with_schema  # bench/ is on sys.path

            where = ["--store", with_schema(args.store, schema)]
        else:
            where = ["--data", str(Path(tmp) / "data")]
        try:
            urls = []
            for _ in range(args.nodes):
                proc, url = start_server(where, args.durability)
                procs.append(proc)
                urls.append(url)
            asyncio.run(run(args, urls, [p.pid for p in procs]))
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=30)
            if args.store:
                asyncio.run(drop(args.store, schema))


if __name__ == "__main__":
    main()
