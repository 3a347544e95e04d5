"""arq on Redis. A job stays in the queue until it completes; a worker marks it
in progress with a key that expires ``job_timeout`` + 10 s after it started,
after which another worker runs it again (arq's at-least-once). Settings:
``job_timeout`` 30 s (arq's default is 300 s), ``max_jobs`` 8 per worker
process (arq's default is 10). W1b: arq has no bulk enqueue; the producer
awaits 100 ``enqueue_job`` calls at once (``asyncio.gather``) per batch.

Workers: ``arq bench.runner.systems.arq_system.WorkerSettings``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, ClassVar

from arq.connections import RedisSettings

from bench.runner.recorder import arecord
from bench.runner.systems.base import (
    LOCAL_REDIS,
    QUEUE_ENV,
    AsyncProducer,
    System,
    python_tool,
    redis_durability,
    redis_flush,
)

DATABASE = 13
REDIS_URL = f"{LOCAL_REDIS}/{DATABASE}"
REDIS = RedisSettings(host="127.0.0.1", port=6379, database=DATABASE)
JOB_TIMEOUT = 30
MAX_JOBS = 8


async def bench_task(ctx: dict[str, Any], body: dict[str, Any]) -> None:
    await arecord(body)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [bench_task]
    redis_settings = REDIS
    queue_name = os.environ.get(QUEUE_ENV, "bench")
    max_jobs = MAX_JOBS
    job_timeout = JOB_TIMEOUT


class ArqProducer(AsyncProducer):
    async def open(self) -> None:
        from arq import create_pool

        self.pool = await create_pool(REDIS, default_queue_name=os.environ[QUEUE_ENV])

    async def enqueue(self, body: dict[str, Any]) -> None:
        await self.pool.enqueue_job("bench_task", body)

    async def enqueue_many(self, bodies: list[dict[str, Any]]) -> None:
        await asyncio.gather(*(self.pool.enqueue_job("bench_task", body) for body in bodies))

    async def close(self) -> None:
        await self.pool.aclose()


class ArqSystem(System):
    name = "arq"
    distribution = "arq"
    pool = "asyncio"
    concurrency = MAX_JOBS
    bulk = "none: 100 enqueue_job calls awaited together (asyncio.gather)"
    settings: ClassVar[dict[str, str]] = {
        "job_timeout": f"{JOB_TIMEOUT} s",
        "max_jobs": str(MAX_JOBS),
        "broker": f"{REDIS_URL} (a Redis database of its own)",
    }
    redelivery = (
        f"a job is run again once its in-progress key expires ({JOB_TIMEOUT} + 10 s after"
        " it started)"
    )

    def start(self, work: Path) -> None:
        super().start(work)
        self.durability, self.server_version = redis_durability(REDIS_URL)
        redis_flush(REDIS_URL)

    def stop(self) -> None:
        redis_flush(REDIS_URL)

    def worker_args(self, queue: str) -> list[str]:
        return python_tool("arq", f"{__name__}.WorkerSettings")

    def producer(self) -> AsyncProducer:
        return ArqProducer()

    def cleanup(self, queue: str) -> None:
        redis_flush(REDIS_URL)
