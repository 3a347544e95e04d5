"""A producer to be killed along with its broker: ``python producer_child.py
URL QUEUE``.

Several tasks share one AsyncClient and enqueue until the process is killed,
singles and batches of five alternating. Every body is ``seq:<n>``. Only
once an enqueue returned (the broker committed it) does a task print, and
flush, one line per message: ``<id> <seq>``. A line is one small write, so a
kill leaves it whole or absent (the parent ignores an unterminated tail).
While the broker is down the client keeps reconnecting (its timeout is
long) and sends its pending enqueues again, with their idempotency keys.
"""

from __future__ import annotations

import asyncio
import itertools
import sys

import conveyor
from conveyor import NewMessage

TASKS = 4


async def produce(client: conveyor.AsyncClient, queue: str, seqs: itertools.count[int]) -> None:
    out = sys.stdout
    while True:
        seq = next(seqs)
        if seq % 2:
            result = await client.enqueue(queue, f"seq:{seq}".encode())
            out.write(f"{result.id} {seq}\n")
        else:
            numbers = [seq, *(next(seqs) for _ in range(4))]
            results = await client.enqueue_many(
                queue, [NewMessage(body=f"seq:{n}".encode()) for n in numbers]
            )
            out.write("".join(f"{r.id} {n}\n" for r, n in zip(results, numbers, strict=True)))
        out.flush()


async def main(url: str, queue: str) -> None:
    async with conveyor.AsyncClient(url, name="producer", timeout=60) as client:
        await client.create_queue(queue)
        print("ready", flush=True)
        seqs = itertools.count()
        await asyncio.gather(*(produce(client, queue, seqs) for _ in range(TASKS)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
