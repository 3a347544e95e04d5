"""procrastinate on the local PostgreSQL, in a database of its own
(``bench_procrastinate``, made afresh when the system starts).

Jobs are rows; a worker takes one with ``SELECT ... FOR UPDATE SKIP LOCKED``
and marks it done after the task ran. procrastinate does not retry the jobs
of a dead worker by itself: its documentation gives a periodic task that
retries "stalled" jobs (their worker's heartbeat older than 30 s), and that is
set up here, every 5 s. Workers: ``procrastinate worker --concurrency 8``
(LISTEN/NOTIFY on). W1b: ``Task.batch_defer_async`` (100 jobs per call).
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from procrastinate import App, PsycopgConnector

from bench.runner.recorder import arecord
from bench.runner.systems.base import (
    LOCAL_POSTGRES,
    QUEUE_ENV,
    AsyncProducer,
    System,
    postgres_database,
    postgres_drop,
    python_tool,
)

DATABASE = "bench_procrastinate"
CONNINFO = f"{LOCAL_POSTGRES}/{DATABASE}"
STALLED_AFTER = 30  # seconds since the worker's last heartbeat
QUEUE = os.environ.get(QUEUE_ENV, "bench")

app = App(connector=PsycopgConnector(conninfo=CONNINFO))


@app.task(name="bench_task", queue=QUEUE)
async def bench_task(body: dict[str, Any]) -> None:
    await arecord(body)


@app.periodic(cron="* * * * * */5")
@app.task(name="retry_stalled_jobs", queue=QUEUE)
async def retry_stalled_jobs(timestamp: int) -> None:
    stalled = await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=STALLED_AFTER)
    for job in stalled:
        if job.id is not None:
            await app.job_manager.retry_job_by_id_async(job.id, retry_at=datetime.now(UTC))


class ProcrastinateProducer(AsyncProducer):
    async def open(self) -> None:
        await app.open_async()

    async def enqueue(self, body: dict[str, Any]) -> None:
        await bench_task.defer_async(body=body)

    async def enqueue_many(self, bodies: list[dict[str, Any]]) -> None:
        await bench_task.batch_defer_async(*({"body": body} for body in bodies))

    async def close(self) -> None:
        await app.close_async()


class ProcrastinateSystem(System):
    name = "procrastinate"
    distribution = "procrastinate"
    pool = "asyncio"
    concurrency = 8
    bulk = "Task.batch_defer_async (one call per 100)"
    settings: ClassVar[dict[str, str]] = {
        "database": f"{DATABASE} (its own)",
        "worker": "procrastinate worker --concurrency 8 (LISTEN/NOTIFY)",
        "stalled jobs": f"periodic task every 5 s retries jobs {STALLED_AFTER} s stalled",
    }
    redelivery = f"the periodic task retries jobs whose worker's heartbeat is {STALLED_AFTER} s old"

    def start(self, work: Path) -> None:
        super().start(work)
        self.durability, self.server_version = postgres_database(DATABASE)
        args = python_tool("procrastinate", "--app", f"{__name__}.app", "schema", "--apply")
        subprocess.run(args, check=True, capture_output=True, timeout=60)

    def stop(self) -> None:
        postgres_drop(DATABASE)

    def worker_args(self, queue: str) -> list[str]:
        return python_tool("procrastinate", "--app", f"{__name__}.app", "--log-level",
                           "warning", "worker", "--queues", queue,
                           "--concurrency", str(self.concurrency))  # fmt: skip

    def producer(self) -> AsyncProducer:
        return ProcrastinateProducer()

    def cleanup(self, queue: str) -> None:
        import psycopg

        with psycopg.connect(CONNINFO, autocommit=True) as conn:
            conn.execute("TRUNCATE procrastinate_jobs, procrastinate_periodic_defers CASCADE")
