"""The producer that test_crash_enqueue kills: ``python crash_enqueue_child.py
DB DURABILITY``.

It opens a Broker on a SQLite file, creates the queue ``crash`` and enqueues
until it is killed, from a few concurrent tasks so that group commits hold
several operations. Singles and batches of ten alternate. Every body carries
its sequence number, its batch and a checksum. Only after an enqueue returned
does it print, and flush, one line:

    S <id> <seq>                          a single message
    B <batch> <id>:<seq> ... (ten pairs)  a batch

A line is one write() of well under PIPE_BUF bytes, so a kill leaves either
the whole line or none of it (the parent ignores an unterminated tail).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import sys

from conveyor.broker.broker import Broker
from conveyor.core.types import NewMessage
from conveyor.store.sqlite.store import SqliteStore

QUEUE = "crash"
PRODUCERS = 4


def make_body(seq: int, batch: int) -> bytes:
    """``seq|batch|padding|checksum``; batch is -1 for a single message."""
    payload = f"{seq}|{batch}|{'x' * (seq % 97)}"
    digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return f"{payload}|{digest}".encode()


def check_body(body: bytes) -> tuple[int, int]:
    """(seq, batch) of a body; ValueError if it is corrupt."""
    payload, _, digest = body.decode().rpartition("|")
    if hashlib.sha256(payload.encode()).hexdigest()[:16] != digest:
        raise ValueError(f"bad checksum in {body!r}")
    seq, batch, _ = payload.split("|")
    return int(seq), int(batch)


async def produce(
    broker: Broker, seqs: itertools.count[int], batches: itertools.count[int]
) -> None:
    out = sys.stdout
    while True:
        seq = next(seqs)
        if seq % 2:
            result = await broker.enqueue(QUEUE, make_body(seq, -1))
            out.write(f"S {result.id} {seq}\n")
        else:
            batch = next(batches)
            numbers = [seq, *(next(seqs) for _ in range(9))]
            results = await broker.enqueue_many(
                QUEUE, [NewMessage(body=make_body(n, batch)) for n in numbers]
            )
            pairs = " ".join(f"{r.id}:{n}" for r, n in zip(results, numbers, strict=True))
            out.write(f"B {batch} {pairs}\n")
        out.flush()


async def main(path: str, durability: str) -> None:
    broker = Broker(SqliteStore(path, durability=durability), monitor=False)  # type: ignore[arg-type]
    await broker.start()
    await broker.create_queue(QUEUE)
    print("ready", flush=True)
    seqs, batches = itertools.count(), itertools.count()
    await asyncio.gather(*(produce(broker, seqs, batches) for _ in range(PRODUCERS)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
