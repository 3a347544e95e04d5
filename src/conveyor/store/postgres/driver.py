"""The little of asyncpg the PostgreSQL store uses, typed, and the one place
where its errors become Conveyor errors.

asyncpg ships no type information; these protocols describe the calls the
store makes, so the rest of the package is checked strictly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, LiteralString, Protocol, cast

import asyncpg  # type: ignore[import-untyped]

from conveyor.core.errors import ConveyorError, InvalidArgument, StoreError
from conveyor.core.retry import RetryPolicy
from conveyor.store.postgres.options import PostgresOptions


class Record(Protocol):
    def __getitem__(self, index: int) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...


class Connection(Protocol):
    async def fetch(self, query: LiteralString, *args: object) -> list[Record]: ...
    async def fetchrow(self, query: LiteralString, *args: object) -> Record | None: ...
    async def fetchval(self, query: LiteralString, *args: object) -> Any: ...
    async def execute(self, query: LiteralString, *args: object) -> str: ...
    def transaction(
        self, *, isolation: str | None = None, readonly: bool = False
    ) -> AbstractAsyncContextManager[object]: ...
    def is_closed(self) -> bool: ...
    async def close(self, *, timeout: float | None = None) -> None: ...
    def terminate(self) -> None: ...
    def get_server_pid(self) -> int: ...
    async def add_listener(
        self, channel: str, callback: Callable[[object, int, str, str], None]
    ) -> None: ...
    def add_termination_listener(self, callback: Callable[[object], None]) -> None: ...


class Pool(Protocol):
    def acquire(self) -> AbstractAsyncContextManager[Connection]: ...
    async def close(self) -> None: ...
    def terminate(self) -> None: ...
    def get_size(self) -> int: ...
    def get_idle_size(self) -> int: ...


def application_name(options: PostgresOptions) -> str:
    """What pg_stat_activity shows for the store's connections: the schema
    tells one installation's backends from another's."""
    return f"{options.application_name} {options.schema}"


def _connect_kwargs(options: PostgresOptions) -> dict[str, Any]:
    return {
        "dsn": options.dsn,
        "timeout": options.connect_timeout,
        # Every name resolves in the store's own schema. JIT compiling pays
        # off for analytics, never for a queue's short statements.
        "server_settings": {
            "search_path": options.schema,
            "application_name": application_name(options),
            "jit": "off",
        },
    }


async def connect(options: PostgresOptions) -> Connection:
    try:
        conn = await asyncpg.connect(**_connect_kwargs(options))
    except Exception as exc:
        raise store_error(exc) from exc
    return cast(Connection, conn)


class _PooledConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection returned without asyncpg's reset statement (one
    round trip per release): the store leaves no session state behind on
    them (settings are set per transaction, the one session-level advisory
    lock is released or its connection terminated), and an open transaction
    is still rolled back by the pool."""

    def get_reset_query(self) -> str:
        return ""


async def create_pool(options: PostgresOptions) -> Pool:
    try:
        pool = await asyncpg.create_pool(
            min_size=options.pool_min,
            max_size=options.pool_max,
            connection_class=_PooledConnection,
            **_connect_kwargs(options),
        )
    except Exception as exc:
        raise store_error(exc) from exc
    return cast(Pool, pool)


class RetryTransaction(Exception):
    """Raised inside a transaction that saw another node's commit too late
    (a dedup or idempotency key taken meanwhile): run it again."""


# A transaction that failed with a transient error (is_transient) runs again
# after 2, 4, 8... ms, at most this many times in all: a pooled operation, or
# a round of the writer.
TRANSIENT_RUNS = 8
TRANSIENT_BACKOFF = RetryPolicy(base=0.002, cap=1.0, jitter=0.0)


def is_transient(exc: BaseException) -> bool:
    """The transaction was rolled back and may simply be run again."""
    return isinstance(
        exc,
        RetryTransaction
        | asyncpg.exceptions.DeadlockDetectedError
        | asyncpg.exceptions.SerializationError
        | asyncpg.exceptions.LockNotAvailableError,
    )


def is_unique_violation(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.exceptions.UniqueViolationError)


# The connection is gone or unusable: lost, closed, or left by an operation
# cut in the middle ("another operation is in progress", an InternalClientError
# of asyncpg's protocol state).
_CONNECTION_ERRORS = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)
# SQLSTATE classes of a server that ends the session: 08 connection
# exception, 57P operator intervention (pg_terminate_backend, shutdown).
_ENDS_SESSION = ("08", "57P")


def is_driver_error(exc: BaseException) -> bool:
    """An error of the database, the driver or the connection (not a bug of ours)."""
    return isinstance(exc, (asyncpg.PostgresError, *_CONNECTION_ERRORS))


def is_connection_error(exc: BaseException) -> bool:
    """The connection broke: whether the last commit happened is unknown."""
    if isinstance(exc, asyncpg.PostgresError) and str(exc.sqlstate or "").startswith(_ENDS_SESSION):
        return True
    return isinstance(exc, _CONNECTION_ERRORS)


# Text PostgreSQL cannot store: NUL characters, unpaired surrogates.
_BAD_TEXT = ("22021", "22P05")


def translate(exc: BaseException) -> BaseException:
    """What a store operation that failed with ``exc`` raises to the broker:
    a ConveyorError as it is, a driver error as store_error() makes it, and
    anything else (a bug) unchanged. Every store entry point goes through it."""
    if isinstance(exc, ConveyorError) or not is_driver_error(exc):
        return exc
    return store_error(exc)


def store_error(exc: BaseException) -> ConveyorError:
    """A driver error as the Conveyor error the broker and clients see:
    InvalidArgument for text the database cannot store, else StoreError."""
    if isinstance(exc, ConveyorError):
        return exc
    if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate in _BAD_TEXT:
        return InvalidArgument(f"PostgreSQL cannot store this text (no NUL characters): {exc}")
    if isinstance(exc, asyncpg.exceptions.DataError) and isinstance(
        exc.__cause__, UnicodeEncodeError
    ):
        return InvalidArgument(f"text that is not valid Unicode (unpaired surrogates): {exc}")
    if is_connection_error(exc):
        return StoreError(f"PostgreSQL connection failed: {type(exc).__name__}: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        return StoreError(f"PostgreSQL error {exc.sqlstate}: {exc}")
    return StoreError(f"PostgreSQL: {type(exc).__name__}: {exc}")


def rowcount(status: str) -> int:
    """The row count of a command status such as 'UPDATE 3' or 'INSERT 0 5'."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


Acquire = Callable[[], AbstractAsyncContextManager[Connection]]
Operation = Callable[[Connection], Awaitable[Any]]
