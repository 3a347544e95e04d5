"""Huey on SQLite (``SqliteHuey``), a database file per measurement in the
suite's working directory, ``fsync=True`` (PRAGMA synchronous=FULL, WAL).

Workers: ``huey_consumer <this module>.huey -k thread -w 8``, one consumer
process per worker process, polling with Huey's default delays (0.1 s,
backing off to 10 s while idle). Huey has no acknowledgement: a consumer
removes a task from the queue when it takes it, so a task whose consumer is
killed while running is gone. No bulk enqueue: W1b enqueues one by one. The
consumers import this module; the database file comes from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from huey import SqliteHuey

from bench.runner.recorder import record
from bench.runner.systems.base import QUEUE_ENV, Producer, System, python_tool

DB_ENV = "BENCH_HUEY_DB"

huey = SqliteHuey(
    name=os.environ.get(QUEUE_ENV, "bench"),
    filename=os.environ.get(DB_ENV, ":memory:"),
    fsync=True,
)


@huey.task(name="bench_task")
def bench_task(body: dict[str, Any]) -> None:
    record(body)


class HueyProducer(Producer):
    def enqueue(self, body: dict[str, Any]) -> None:
        bench_task(body)

    def enqueue_many(self, bodies: list[dict[str, Any]]) -> None:
        for body in bodies:
            bench_task(body)


class HueySystem(System):
    name = "huey"
    distribution = "huey"
    pool = "threads"
    concurrency = 8
    settings: ClassVar[dict[str, str]] = {
        "storage": "SqliteHuey(fsync=True): synchronous=FULL, journal_mode=wal",
        "consumer": "huey_consumer -k thread -w 8, default polling delays",
    }
    redelivery = "none: a task leaves the queue when a consumer takes it (at most once)"

    def start(self, work: Path) -> None:
        super().start(work)
        (work / "huey").mkdir(parents=True, exist_ok=True)
        self.durability = "SQLite synchronous=FULL (fsync on every commit), WAL"
        self.server_version = "SQLite (no server)"

    def _db(self, queue: str) -> Path:
        return self.work / "huey" / f"{queue}.db"

    def env(self, queue: str) -> dict[str, str]:
        return {**super().env(queue), DB_ENV: str(self._db(queue))}

    def worker_args(self, queue: str) -> list[str]:
        return python_tool("huey.bin.huey_consumer", f"{__name__}.huey", "-k", "thread",
                           "-w", str(self.concurrency), "-q")  # fmt: skip

    def producer(self) -> Producer:
        return HueyProducer()

    def cleanup(self, queue: str) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self._db(queue)}{suffix}").unlink(missing_ok=True)
