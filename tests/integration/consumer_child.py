"""A consumer that takes deliveries and never settles them, to be killed:
``python consumer_child.py URL QUEUE MODE N``.

MODE ``consume``: ``Client.consume(queue, prefetch=N)``; MODE ``receive``:
``Client.receive(queue, max=N)`` until it holds N. Each delivery is printed
(``got <id> <attempts>``, flushed) as soon as it arrives; then the process
sleeps, holding every lease, until it is killed.
"""

from __future__ import annotations

import sys
import time

import conveyor


def main(url: str, queue: str, mode: str, count: int) -> None:
    held = []
    with conveyor.Client(url, name=f"doomed-{mode}", timeout=10) as client:
        if mode == "consume":
            for d in client.consume(queue, prefetch=count):
                held.append(d)
                print(f"got {d.id} {d.attempts}", flush=True)
        else:
            while len(held) < count:
                for d in client.receive(queue, max=count - len(held), wait=1):
                    held.append(d)
                    print(f"got {d.id} {d.attempts}", flush=True)
            print("holding", flush=True)
            while True:
                time.sleep(60)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
