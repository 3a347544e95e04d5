"""The producer of one measurement, run as a process of its own:

    python -m bench.runner.produce SYSTEM --key K --count N [--batch B]
        [--size BYTES] [--rate PER_S] [--sleep S]

The environment is the system's (``System.env``) plus the recorder's URL.
Enqueues ``count`` tasks one call at a time (``--batch 1``), in calls of
``batch``, or one at a time at a steady ``rate``; prints one JSON line on
stdout: ``{"count": n, "seconds": time spent enqueueing}``. Every few percent
it stores how many it sent under ``<key>:sent`` in the recorder, for the
harness's progress line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any

from bench.runner.recorder import RECORDER_ENV, payload
from bench.runner.systems import load
from bench.runner.systems.base import AsyncProducer, Producer


class Plan:
    def __init__(self, args: argparse.Namespace) -> None:
        self.key: str = args.key
        self.count: int = args.count
        self.batch: int = args.batch
        self.size: int = args.size
        self.rate: float = args.rate
        self.sleep: float = args.sleep
        self.step = max(self.batch, self.count // 50)
        import redis

        self._recorder = redis.Redis.from_url(os.environ[RECORDER_ENV])
        self._reported = 0

    def bodies(self, first: int) -> list[dict[str, Any]]:
        n = min(self.batch, self.count - first)
        return [payload(self.key, first + j, self.size, self.sleep) for j in range(n)]

    def wait_turn(self, start: float, sent: int) -> float:
        """Seconds to wait before task ``sent`` to keep the steady rate."""
        return 0.0 if not self.rate else start + sent / self.rate - time.perf_counter()

    def progress(self, sent: int, done: bool = False) -> None:
        if done or sent - self._reported >= self.step:
            self._recorder.set(f"{self.key}:sent", sent)
            self._reported = sent


def run_sync(producer: Producer, plan: Plan) -> float:
    enqueue: Callable[[list[dict[str, Any]]], None] = (
        (lambda bodies: producer.enqueue(bodies[0])) if plan.batch == 1 else producer.enqueue_many
    )
    sent = 0
    start = time.perf_counter()
    while sent < plan.count:
        pause = plan.wait_turn(start, sent)
        if pause > 0:
            time.sleep(pause)
        bodies = plan.bodies(sent)
        enqueue(bodies)
        sent += len(bodies)
        plan.progress(sent)
    took = time.perf_counter() - start
    producer.close()
    return took


async def run_async(producer: AsyncProducer, plan: Plan) -> float:
    await producer.open()
    sent = 0
    start = time.perf_counter()
    while sent < plan.count:
        pause = plan.wait_turn(start, sent)
        if pause > 0:
            await asyncio.sleep(pause)
        bodies = plan.bodies(sent)
        if plan.batch == 1:
            await producer.enqueue(bodies[0])
        else:
            await producer.enqueue_many(bodies)
        sent += len(bodies)
        plan.progress(sent)
    took = time.perf_counter() - start
    await producer.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system")
    parser.add_argument("--key", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    plan = Plan(args)
    producer = load(args.system).producer()
    if isinstance(producer, AsyncProducer):
        took = asyncio.run(run_async(producer, plan))
    else:
        took = run_sync(producer, plan)
    plan.progress(plan.count, done=True)
    print(json.dumps({"count": plan.count, "seconds": took}), flush=True)


if __name__ == "__main__":
    main()
