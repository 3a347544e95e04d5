"""Fixtures shared by every test: stores, a controllable clock, brokers.

``store_factory`` is parametrized over every Store the project has. SQLite
always runs (an fsync file store and an in-memory one); a store whose service
is unreachable is skipped locally and fails under CI=true (requires.py). A
test that means only some stores says so with ``@pytest.mark.stores(...)``:
the others are deselected, not skipped, so no parameter skips in CI.

PostgreSQL: ``CONVEYOR_TEST_POSTGRES`` (default
postgresql://postgres@127.0.0.1:5432/test) names the database; each test gets
a schema of its own, with a random name, dropped at teardown.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.broker.broker import Broker, BrokerConfig
from conveyor.store.base import Store
from conveyor.store.sqlite.store import SqliteStore
from requires import unavailable

STORE_KINDS = ("sqlite-file", "sqlite-memory", "postgres")
POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


class FakeClock:
    """A broker clock that moves only when a test says so."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


StoreFactory = Callable[[], Store]


def run_in_thread(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to the end on a loop of its own, whatever loop is
    running here (fixture set-up and teardown of PostgreSQL schemas)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


async def _postgres_check(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=3)
    await conn.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test database, once it answered; skipped locally, failed in CI."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        reason = "asyncpg is not installed (pip install 'conveyor-queue[test]')"
    else:
        try:
            run_in_thread(_postgres_check(POSTGRES_URL))
            return POSTGRES_URL
        except Exception as exc:
            reason = f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc}"
    unavailable(reason)


async def _drop_schema(url: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def with_schema(url: str, schema: str) -> str:
    return url + ("&" if "?" in url else "?") + f"schema={schema}"


@pytest.fixture
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """A fresh schema name for this test (dropped at teardown)."""
    schema = f"conveyor_test_{secrets.token_hex(6)}"
    try:
        yield schema
    finally:
        run_in_thread(_drop_schema(postgres_url, schema))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "stores(*kinds): run only on these store_factory kinds (others deselected)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the store parameters a ``stores`` marker leaves out."""
    kept, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("stores")
        callspec = getattr(item, "callspec", None)
        kind = callspec.params.get("store_factory") if callspec is not None else None
        if marker is not None:
            assert set(marker.args) <= set(STORE_KINDS), marker.args
        (dropped if marker and kind and kind not in marker.args else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(params=STORE_KINDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Makes an unopened store of one kind; each call opens the same database
    (for a persistent store)."""
    kind = request.param
    if kind == "postgres":
        from conveyor.store.postgres.store import PostgresStore

        url = with_schema(
            request.getfixturevalue("postgres_url"), request.getfixturevalue("postgres_schema")
        )
        return lambda: PostgresStore(url)
    if kind == "sqlite-file":
        path = tmp_path / "conveyor.db"
        return lambda: SqliteStore(path, durability="fsync")
    if kind == "sqlite-memory":
        # Nothing survives close: tests that reopen a store check
        # store.capabilities.persistent first.
        return lambda: SqliteStore(None, durability="memory")
    raise AssertionError(kind)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def broker_config() -> BrokerConfig:
    """The settings of the ``broker`` fixture; a test module overrides this
    fixture to change them."""
    return BrokerConfig(max_body=64 * 1024)


@pytest.fixture
async def broker(
    store_factory: StoreFactory, clock: FakeClock, broker_config: BrokerConfig
) -> AsyncIterator[Broker]:
    """A started broker on a fresh store, with a fake clock and no background
    monitor: tests move time with ``clock.advance`` and run the lease monitor
    with ``await broker.sweep_once()``."""
    b = Broker(store_factory(), broker_config, clock=clock, monitor=False)
    await b.start()
    try:
        yield b
    finally:
        await b.close()
