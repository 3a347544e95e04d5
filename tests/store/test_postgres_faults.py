"""The PostgreSQL store when its connections die under load: the test's own
backends (found by the application_name of the test's schema, never
another session's) are terminated with pg_terminate_backend while producers,
consumers and readers run.

Every failure a caller sees is a StoreError (or, for an ack retried after
a commit whose reply was lost, LeaseLost): never a driver exception, never a
bare ConveyorError with code "error". The LISTEN listener logs one WARNING
line (no traceback) for a lost connection and an INFO line once it listens
again; nothing is logged at ERROR. Afterwards the store serves again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conveyor.broker.broker import Broker, BrokerConfig
from conveyor.core.errors import ConveyorError, LeaseLost, StoreError
from conveyor.core.types import NewMessage

asyncpg = pytest.importorskip("asyncpg")

from conveyor.store.postgres import driver  # noqa: E402
from conveyor.store.postgres.options import parse_url  # noqa: E402
from conveyor.store.postgres.store import PostgresStore  # noqa: E402

QUEUE = "faults"
KILLS = 6  # rounds of pg_terminate_backend during the load
KILL_EVERY = 0.4  # seconds between them
RECOVERY = 30.0  # seconds a recovery may take before the test fails


def with_schema(url: str, schema: str) -> str:
    return url + ("&" if "?" in url else "?") + f"schema={schema}"


@pytest.fixture
def pg_url(postgres_url: str, postgres_schema: str) -> str:
    return with_schema(postgres_url, postgres_schema)


@pytest.fixture
async def broker(pg_url: str) -> AsyncIterator[Broker]:
    node = Broker(PostgresStore(pg_url), BrokerConfig(monitor_interval=0.1))
    await node.start()
    try:
        yield node
    finally:
        await node.close()


async def terminate_backends(url: str) -> int:
    """pg_terminate_backend on every backend of this schema's store (they
    carry its application_name), from a connection of the test's own."""
    options = parse_url(url)
    conn = await asyncpg.connect(options.dsn)
    try:
        pids = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = $1 AND pid <> pg_backend_pid()",
            driver.application_name(options),
        )
    finally:
        await conn.close()
    return len(pids)


class Outcomes:
    """What the callers saw: successes, and every failure by its type and code."""

    def __init__(self) -> None:
        self.ok = 0
        self.failures: Counter[str] = Counter()
        self.wrong: list[BaseException] = []

    async def run(self, call: Any, *allowed: type[ConveyorError]) -> Any:
        try:
            result = await call
        except (StoreError, *allowed) as exc:
            self.failures[f"{type(exc).__name__}({exc.code})"] += 1
            return None
        except Exception as exc:  # a driver error, or a bare ConveyorError: wrong
            self.wrong.append(exc)
            return None
        self.ok += 1
        return result


async def load(broker: Broker, outcomes: Outcomes, stop: asyncio.Event) -> None:
    """Producers, a consumer and readers, until ``stop``."""
    session = await broker.open_session("faults", capacity=50, timeout=120)

    async def produce() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            await outcomes.run(broker.enqueue(QUEUE, b"one %d" % n))
            await outcomes.run(broker.enqueue_many(QUEUE, [NewMessage(body=b"batch")] * 20))

    async def consume() -> None:
        while not stop.is_set():
            got = await outcomes.run(broker.receive(session, QUEUE, max=20, wait=0.2))
            for delivery in got or []:
                await outcomes.run(broker.ack(delivery.id, delivery.token), LeaseLost)

    async def read() -> None:
        while not stop.is_set():
            await outcomes.run(broker.stats(QUEUE))
            await outcomes.run(broker.queues())
            await outcomes.run(broker.sessions())
            await asyncio.sleep(0.01)

    async with asyncio.TaskGroup() as tasks:
        for work in (produce, produce, consume, read):
            tasks.create_task(work())


async def serves_again(broker: Broker) -> None:
    """A normal enqueue and receive succeed (each retried while the store
    is still reconnecting, as a client would)."""
    deadline = time.monotonic() + RECOVERY
    while True:
        try:
            session = await broker.open_session("after", timeout=60)
            sent = await broker.enqueue(QUEUE, b"after the storm", priority=9)
            got = await broker.receive(session, QUEUE, max=1)
            assert [d.id for d in got] == [sent.id]
            await broker.ack(got[0].id, got[0].token)
            return
        except StoreError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_terminated_connections_surface_as_store_errors(
    broker: Broker, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="conveyor")
    await broker.create_queue(QUEUE, visibility_timeout=60)
    outcomes = Outcomes()
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(load(broker, outcomes, stop))
        killed = 0
        for _ in range(KILLS):
            await asyncio.sleep(KILL_EVERY)
            killed += await terminate_backends(pg_url)
        stop.set()
    assert killed >= KILLS  # the store's own backends, every round
    assert not outcomes.wrong, [
        f"{type(e).__module__}.{type(e).__name__}: {e}" for e in outcomes.wrong
    ]
    assert outcomes.failures, "no operation failed: the connections were not cut under load"
    assert outcomes.ok > 0
    await serves_again(broker)

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_the_listener_warns_once_and_says_when_it_listens_again(
    broker: Broker, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="conveyor.store.postgres")
    await broker.create_queue(QUEUE)
    caplog.clear()
    assert await terminate_backends(pg_url) >= 1
    deadline = time.monotonic() + RECOVERY
    while not any("listening" in r.getMessage() and r.levelno == logging.INFO
                  for r in caplog.records):  # fmt: skip
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        await asyncio.sleep(0.05)
    listener = [r for r in caplog.records if "LISTEN" in r.getMessage()]
    lost = [r for r in listener if r.levelno == logging.WARNING]
    assert len(lost) == 1, [r.getMessage() for r in listener]
    assert all(r.exc_info is None for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await serves_again(broker)
