"""PgQueuer on the local PostgreSQL, in a database of its own
(``bench_pgqueuer``, made afresh and ``pgq install``-ed, tables durable).

Jobs are rows, picked with ``FOR UPDATE SKIP LOCKED``; a worker beats a
heartbeat for its picked jobs, and another worker re-picks a job whose
heartbeat is older than ``heartbeat_timeout`` (30 s, PgQueuer's default).
Workers: ``python -m bench.runner.systems.pgqueuer_system``, which does what
``pgq run <this module>:create_pgqueuer --batch-size 4 --max-concurrent-tasks 8``
does: ``await pgq.run(batch_size=4, max_concurrent_tasks=8)`` (PgQueuer wants
the cap to be at least twice the batch). The ``pgq run`` command of PgQueuer
1.6.0 fails before starting (its logging setup takes the level as a string).
The entrypoint is named after the measurement's queue. W1b:
``Queries.enqueue`` with lists (one INSERT of 100 rows).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

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

DATABASE = "bench_pgqueuer"
DSN = f"{LOCAL_POSTGRES}/{DATABASE}"
BATCH_SIZE = 4
MAX_CONCURRENT = 8


async def create_pgqueuer() -> Any:
    """The factory ``pgq run`` calls in each worker process."""
    import asyncpg
    from pgqueuer import PgQueuer
    from pgqueuer.models import Job

    pgq = PgQueuer.from_asyncpg_connection(await asyncpg.connect(DSN))

    @pgq.entrypoint(os.environ.get(QUEUE_ENV, "bench"))
    async def bench_task(job: Job) -> None:
        await arecord(json.loads(job.payload or b"{}"))

    return pgq


class PgqueuerProducer(AsyncProducer):
    async def open(self) -> None:
        import asyncpg
        from pgqueuer.queries import Queries

        self.connection = await asyncpg.connect(DSN)
        self.queries = Queries.from_asyncpg_connection(self.connection)
        self.entrypoint = os.environ[QUEUE_ENV]

    async def enqueue(self, body: dict[str, Any]) -> None:
        await self.queries.enqueue(self.entrypoint, json.dumps(body).encode())

    async def enqueue_many(self, bodies: list[dict[str, Any]]) -> None:
        payloads: list[bytes | None] = [json.dumps(body).encode() for body in bodies]
        await self.queries.enqueue([self.entrypoint] * len(bodies), payloads, [0] * len(bodies))

    async def close(self) -> None:
        await self.connection.close()


class PgqueuerSystem(System):
    name = "pgqueuer"
    distribution = "pgqueuer"
    pool = "asyncio"
    concurrency = MAX_CONCURRENT
    bulk = "Queries.enqueue with lists (one call per 100)"
    settings: ClassVar[dict[str, str]] = {
        "database": f"{DATABASE} (its own), pgq install --durability durable",
        "worker": f"pgq.run(batch_size={BATCH_SIZE}, max_concurrent_tasks={MAX_CONCURRENT})",
        "heartbeat_timeout": "30 s (default)",
    }
    redelivery = "a picked job whose heartbeat is 30 s old is picked again by a live worker"

    def start(self, work: Path) -> None:
        import subprocess

        super().start(work)
        self.durability, self.server_version = postgres_database(DATABASE)
        self.durability += "; PgQueuer tables durable (logged)"
        args = python_tool("pgqueuer", "--pg-dsn", DSN, "install", "--durability", "durable")
        subprocess.run(args, check=True, capture_output=True, timeout=60)

    def stop(self) -> None:
        postgres_drop(DATABASE)

    def worker_args(self, queue: str) -> list[str]:
        return python_tool(__name__)

    def producer(self) -> AsyncProducer:
        return PgqueuerProducer()

    def cleanup(self, queue: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(DSN, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename LIKE 'pgqueuer%'"
            ).fetchall()
            if rows:
                tables = sql.SQL(", ").join(sql.Identifier(row[0]) for row in rows)
                conn.execute(sql.SQL("TRUNCATE {} CASCADE").format(tables))


async def run_worker() -> None:
    pgq = await create_pgqueuer()
    await pgq.run(batch_size=BATCH_SIZE, max_concurrent_tasks=MAX_CONCURRENT)


if __name__ == "__main__":
    import asyncio

    asyncio.run(run_worker())
