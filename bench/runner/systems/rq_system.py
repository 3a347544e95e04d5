"""RQ on Redis. Workers: ``rq worker`` with RQ's default ``Worker`` class,
which forks a work horse for every job (RQ runs one job at a time per worker
process; it has no concurrency setting). Jobs: ``job_timeout`` 30 s and
``Retry(max=3)``, so that a job whose worker died (left in the started-job
registry) is retried rather than failed once RQ's maintenance finds it
abandoned. W1b uses ``Queue.enqueue_many`` (one Redis pipeline per 100).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from bench.runner.recorder import record
from bench.runner.systems.base import (
    LOCAL_REDIS,
    QUEUE_ENV,
    Producer,
    System,
    python_tool,
    redis_durability,
    redis_flush,
)

REDIS_URL = f"{LOCAL_REDIS}/11"
JOB_TIMEOUT = 30
RETRIES = 3


def bench_task(body: dict[str, Any]) -> None:
    record(body)


class RqProducer(Producer):
    def __init__(self) -> None:
        from redis import Redis
        from rq import Queue, Retry

        self.queue = Queue(os.environ[QUEUE_ENV], connection=Redis.from_url(REDIS_URL))
        self.retry = Retry(max=RETRIES)

    def enqueue(self, body: dict[str, Any]) -> None:
        self.queue.enqueue(bench_task, body, job_timeout=JOB_TIMEOUT, retry=self.retry)

    def enqueue_many(self, bodies: list[dict[str, Any]]) -> None:
        from rq import Queue

        jobs = [
            Queue.prepare_data(bench_task, (body,), timeout=JOB_TIMEOUT, retry=self.retry)
            for body in bodies
        ]
        self.queue.enqueue_many(jobs)


class RqSystem(System):
    name = "rq"
    distribution = "rq"
    pool = "fork per job"
    concurrency = 1
    bulk = "Queue.enqueue_many (one pipeline per 100)"
    settings: ClassVar[dict[str, str]] = {
        "worker": "rq worker (rq.Worker: a forked work horse per job)",
        "job_timeout": str(JOB_TIMEOUT),
        "retry": f"Retry(max={RETRIES})",
        "broker": f"{REDIS_URL} (a Redis database of its own)",
    }
    redelivery = (
        "a dead worker's job stays in the started registry until RQ finds it abandoned"
        f" (after the {JOB_TIMEOUT} s job timeout); with Retry it is enqueued again"
    )

    def start(self, work: Path) -> None:
        super().start(work)
        self.durability, self.server_version = redis_durability(REDIS_URL)
        redis_flush(REDIS_URL)

    def stop(self) -> None:
        redis_flush(REDIS_URL)

    def worker_args(self, queue: str) -> list[str]:
        return python_tool("rq.cli", "worker", "--url", REDIS_URL, "--worker-class",
                           "rq.worker.Worker", "--quiet", queue)  # fmt: skip

    def producer(self) -> Producer:
        return RqProducer()

    def cleanup(self, queue: str) -> None:
        redis_flush(REDIS_URL)
