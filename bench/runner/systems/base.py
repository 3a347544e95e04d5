"""What every system adapter provides, and helpers the peers share.

The harness drives a system through ``System`` only: start its broker (or
check it is reachable), give the environment and the command line of one
worker process for a queue, clean a queue up, and stop. The producer runs in
a process of its own (bench/runner/produce.py) and gets a ``Producer`` from
the same adapter. Each adapter module also defines, at import, the task that
its worker command runs: the workers import that module through their own
command line tool, so the app object must be a module attribute. Everything
built at import is lazy (no connection), and reads its settings from the
environment that ``System.env`` gives.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path
from typing import Any, ClassVar

QUEUE_ENV = "BENCH_QUEUE"
LOCAL_REDIS = "redis://127.0.0.1:6379"
LOCAL_AMQP = "amqp://guest:guest@127.0.0.1:5672//"
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432"


class Producer:
    """Enqueue benchmark tasks; each call returns once the system accepted them."""

    asynchronous: ClassVar[bool] = False

    def enqueue(self, body: dict[str, Any]) -> None:
        raise NotImplementedError

    def enqueue_many(self, bodies: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        return None


class AsyncProducer:
    """``Producer`` for asyncio clients; the producer process runs a loop."""

    asynchronous: ClassVar[bool] = True

    async def open(self) -> None:
        return None

    async def enqueue(self, body: dict[str, Any]) -> None:
        raise NotImplementedError

    async def enqueue_many(self, bodies: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class System:
    name: ClassVar[str]
    distribution: ClassVar[str]  # the PyPI package whose version is reported
    pool: ClassVar[str] = "threads"  # what runs tasks inside one worker process
    concurrency: ClassVar[int] = 8  # tasks at once in one worker process
    bulk: ClassVar[str] = "none: one call per task"  # how W1b enqueues 100 at once
    settings: ClassVar[dict[str, str]] = {}  # the documented reliable settings used
    redelivery: ClassVar[str] = ""  # what happens to a killed worker's tasks

    def __init__(self) -> None:
        self.work = Path(".")
        self.durability = ""
        self.server_version = ""

    # -- life cycle ---------------------------------------------------------

    def start(self, work: Path) -> None:
        """Start or reach the broker; fill ``durability`` and ``server_version``."""
        self.work = work

    def stop(self) -> None:
        return None

    # -- workers and producer -------------------------------------------------

    def env(self, queue: str) -> dict[str, str]:
        """Environment of the worker and producer processes for ``queue``."""
        return {QUEUE_ENV: queue}

    def worker_args(self, queue: str) -> list[str]:
        """The command line of one worker process."""
        raise NotImplementedError

    def producer(self) -> Producer | AsyncProducer:
        """Called in the producer process, with ``env(queue)`` set."""
        raise NotImplementedError

    def cleanup(self, queue: str) -> None:
        """Remove what a measurement left (workers are stopped by then)."""
        return None

    # -- figures --------------------------------------------------------------

    def probe(self) -> dict[str, float]:
        """Counters read before and after a measurement (Conveyor's /metrics)."""
        return {}

    def probe_delta(
        self, before: dict[str, float], after: dict[str, float], messages: int, seconds: float
    ) -> dict[str, float]:
        return {}

    def info(self) -> dict[str, Any]:
        return {
            "version": importlib.metadata.version(self.distribution),
            "server_version": self.server_version,
            "durability": self.durability,
            "pool": self.pool,
            "concurrency": self.concurrency,
            "bulk": self.bulk,
            "settings": dict(self.settings),
            "redelivery": self.redelivery,
        }

    def layout(self, processes: int) -> str:
        return f"{processes} x {self.concurrency} ({self.pool})"


def python_tool(module: str, *args: str) -> list[str]:
    """Run a package's command line tool with this interpreter."""
    return [sys.executable, "-m", module, *args]


# -- Redis peers ----------------------------------------------------------------


def redis_durability(url: str) -> tuple[str, str]:
    """(durability, server version) of the Redis at ``url``."""
    import redis

    client = redis.Redis.from_url(url)
    save = client.config_get("save").get("save", "")
    aof = client.config_get("appendonly").get("appendonly", "no")
    fsync = client.config_get("appendfsync").get("appendfsync", "")
    version = str(client.info("server")["redis_version"])
    if not save and aof == "no":
        return "Redis in memory only: no RDB snapshots, no AOF (nothing on disk)", version
    return f"Redis save={save!r} appendonly={aof} appendfsync={fsync}", version


def redis_flush(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


# -- PostgreSQL peers -------------------------------------------------------------


def postgres_database(name: str) -> tuple[str, str]:
    """Create database ``name`` afresh; its URL, and the server's durability."""
    import psycopg
    from psycopg import sql

    database = sql.Identifier(name)
    with psycopg.connect(f"{LOCAL_POSTGRES}/test", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(database))
        settings = {}
        for key in ("server_version", "fsync", "synchronous_commit", "wal_sync_method"):
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(key))).fetchone()
            settings[key] = row[0] if row else "?"
    durability = (
        f"PostgreSQL fsync={settings['fsync']} synchronous_commit="
        f"{settings['synchronous_commit']} wal_sync_method={settings['wal_sync_method']}"
    )
    return durability, str(settings["server_version"])


def postgres_drop(name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"{LOCAL_POSTGRES}/test", autocommit=True) as conn:
        query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(query.format(sql.Identifier(name)))


# -- RabbitMQ peers ----------------------------------------------------------------


def rabbitmq_version() -> str:
    import pika

    params = pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F")
    connection = pika.BlockingConnection(params)
    try:
        props = connection._impl.server_properties  # pika keeps them on the impl
        version = props.get("version", b"")
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        connection.close()


def rabbitmq_delete_queues(names: list[str]) -> None:
    import pika

    params = pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F")
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        for name in names:
            channel.queue_delete(name)
    finally:
        connection.close()
