"""SQLite's errors as Conveyor's: the one place the SQLite store maps them.

Every statement of the store runs through the GroupCommitWriter, and every
``sqlite3.Error`` it meets becomes, here, the most specific ConveyorError
(STYLE.md 5; PostgreSQL's counterpart is store/postgres/driver.py):

  SQLITE_BUSY, SQLITE_LOCKED   StoreLocked: another process holds the
                               database locked (a ``sqlite3`` shell inside
                               a write transaction, say) for longer than
                               the connection's busy timeout
  SQLITE_TOOBIG                InvalidArgument: a value larger than SQLite
                               stores (the broker's own limits come first)
  anything else                StoreError: a full disk (SQLITE_FULL), an
                               I/O error (SQLITE_IOERR), a corrupt file or
                               not a database (SQLITE_CORRUPT, SQLITE_NOTADB)

The message starts with ``SQLite: `` and keeps SQLite's own words and, where
the driver gives it, the result code's name.
"""

from __future__ import annotations

import sqlite3

from conveyor.core.errors import ConveyorError, InvalidArgument, StoreError, StoreLocked

_LOCKED = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def store_error(exc: sqlite3.Error) -> ConveyorError:
    """The Conveyor error a SQLite error means."""
    code: int | None = getattr(exc, "sqlite_errorcode", None)
    name: str | None = getattr(exc, "sqlite_errorname", None)
    said = f"SQLite: {exc}" + (f" ({name})" if name else "")
    primary = None if code is None else code & 0xFF  # extended codes keep it in the low byte
    if primary in _LOCKED:
        return StoreLocked(f"{said}: another process holds the database locked")
    if primary == sqlite3.SQLITE_TOOBIG:
        return InvalidArgument(f"{said}: a value too large for the store")
    return StoreError(said)
