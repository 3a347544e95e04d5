"""What the examples of the state machine (stateful_machine.py) run on:
stores of one kind per test, through conftest's ``store_factory``, every
example on an empty store and the same data again for a restart; a clock
the test moves; session ids that replay the same.

Hypothesis runs hundreds of examples in one test, so an example must cost
little to set up: they all share one event loop; SQLite in memory is new
each time; the SQLite file is deleted. PostgreSQL keeps the one schema of
the test (migrated by the first example) and empties its tables, and the
store stays open from one example to the next: a new node's connections
are new server processes whose first use of each statement (catalog
lookups, planning) costs 20-40 ms, ten times the example's own work. Only
the restart rule closes it for real and opens another node.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from conveyor.store.base import Store
from conveyor.store.sqlite.store import SqliteStore

if TYPE_CHECKING:
    import asyncpg

# Every table a PostgreSQL example writes; meta (the epoch) and the id
# sequence stay, as they would across restarts. DELETE, not TRUNCATE: the
# tables hold a few rows, and a TRUNCATE (new files for 11 tables and their
# indexes) took 20-250 ms here against 2 ms.
_PG_EMPTY = "; ".join(
    f"DELETE FROM {table}"
    for table in (
        "messages", "queues", "queue_counts", "dedup", "idempotency", "sessions",
        "session_counts", "consumers", "bucket_owners", "bindings", "results",
    )
)  # fmt: skip

Row = tuple[int, int, str | None, float]  # seq, state, holder, available_at


class FakeClock:
    """A broker clock that moves only when the test says so."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingIds:
    """Stands in for ``secrets`` in the broker module: session ids 1, 2, 3...
    Random ids would move bucket ownership between runs of one example, and
    hypothesis needs each example to replay the same."""

    def __init__(self) -> None:
        self.count = 0

    def token_hex(self, nbytes: int) -> str:
        self.count += 1
        return f"{self.count:0{2 * nbytes}x}"


@functools.cache
def kept_open() -> type[Any]:
    """A PostgreSQL store class that stays open when its broker closes
    (asyncpg imported only where PostgreSQL runs)."""
    from conveyor.store.postgres.store import PostgresStore

    class KeptOpen(PostgresStore):
        async def close(self) -> None:
            """The next example uses it again (``close_for_real`` ends it)."""

        async def close_for_real(self) -> None:
            await super().close()

    return KeptOpen


class ExampleStores:
    def __init__(self, factory: Callable[[], Store], loop: asyncio.AbstractEventLoop) -> None:
        self.factory = factory
        self.loop = loop
        probe = factory()  # unopened: only its kind and where it keeps its data
        caps = probe.capabilities
        if caps.name == "postgres":
            self.kind = "postgres"
            options = probe.options
            sep = "&" if "?" in options.dsn else "?"
            self._pg_url = f"{options.dsn}{sep}schema={options.schema}"
            self._pg_dsn, self._pg_schema = options.dsn, options.schema
        else:
            self.kind = "sqlite-file" if caps.persistent else "sqlite-memory"
        self.persistent = caps.persistent
        # Sessions live in a shared store's database: a node's restart ends none.
        self.sessions_survive_restart = caps.shared
        self._probe = probe
        self._node: Any = None  # the PostgreSQL store the examples share
        self._pg: asyncpg.Connection | None = None

    async def fresh(self) -> Store:
        """A store on empty data, opened or not."""
        if self.kind == "sqlite-file":
            assert isinstance(self._probe, SqliteStore) and self._probe.path is not None
            path = self._probe.path
            for suffix in ("", "-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
        elif self.kind == "postgres":
            conn = await self._postgres()
            if await conn.fetchval("SELECT to_regclass('messages') IS NOT NULL"):
                await conn.execute(_PG_EMPTY)
            if self._node is None:
                self._node = kept_open()(self._pg_url)
            return self._node
        return self.factory()

    async def reopen(self) -> Store:
        """An unopened store on the same data (persistent kinds only); on
        PostgreSQL the node that was open is closed first."""
        assert self.persistent, "nothing survives an in-memory store"
        if self.kind == "postgres":
            await self.close_node()
            self._node = kept_open()(self._pg_url)
            return self._node
        return self.factory()

    async def rows(self, store: Store, queue: str) -> list[Row]:
        """Every stored message of the queue, read straight from the store."""
        query = "SELECT seq, state, holder, available_at FROM messages WHERE queue = "
        if isinstance(store, SqliteStore):
            rows: list[Any] = await store.writer.run(
                lambda tx: tx.conn.execute(query + "?", (queue,)).fetchall()
            )
        else:
            rows = await (await self._postgres()).fetch(query + "$1", queue)
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def _postgres(self) -> asyncpg.Connection:
        """The test's own connection to its schema, for resets and reads."""
        if self._pg is None:
            import asyncpg

            self._pg = await asyncpg.connect(
                self._pg_dsn, server_settings={"search_path": self._pg_schema}
            )
        return self._pg

    async def close_node(self) -> None:
        node, self._node = self._node, None
        if node is not None:
            await node.close_for_real()

    async def close(self) -> None:
        await self.close_node()
        if self._pg is not None:
            await self._pg.close()
            self._pg = None
