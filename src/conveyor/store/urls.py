"""Store URLs, and the store each one opens: the one factory that
``conveyor serve --store``, ``conveyor migrate`` and the embedded client
(``AsyncClient("sqlite:///app.db")``) share, so a URL means the same and
is refused with the same error everywhere.

    sqlite:///relative/path.db           the SQLite store in that file
    sqlite:////absolute/path.db          (SQLAlchemy's convention for slashes)
    sqlite:///path.db?durability=os      fsync (default) or os
    memory://                            SQLite in memory: nothing kept
    postgresql://user@host/db?schema=s   the PostgreSQL store (also postgres://;
                                         its parameters: store/postgres/options.py)

A SQLite URL's ``?durability=`` wins over the ``durability`` a caller
passes (``conveyor serve --durability``); PostgreSQL's durability is the
database's (synchronous_commit), so there it is not used. With no URL, the
SQLite store is ``conveyor.db`` in the ``data`` directory, or in memory
for durability ``memory``. An error names a URL by its scheme only: the
rest of it may hold a password.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

from conveyor.core.errors import InvalidArgument
from conveyor.store.base import Store

SCHEMES = ("sqlite", "memory", "postgresql", "postgres")
SQLITE_DURABILITIES = ("fsync", "os")  # memory is memory://
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,30}")


def open_store(
    url: str | None, durability: str = "fsync", *, data: str | Path = "conveyor-data"
) -> Store:
    """The store a URL names, not yet opened; InvalidArgument for a URL
    that names none."""
    from conveyor.store.sqlite.store import SqliteStore

    if url is None:
        if durability == "memory":
            return SqliteStore(None, durability="memory")
        return SqliteStore(Path(data) / "conveyor.db", durability=durability)  # type: ignore[arg-type]
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        shown = f"{scheme}://..." if sep and _SCHEME.fullmatch(scheme) else "no scheme://"
        raise InvalidArgument(
            f"unsupported store URL ({shown}): sqlite:///path.db, memory:// or postgresql://..."
        )
    if scheme == "memory":
        return SqliteStore(None, durability="memory")
    if scheme == "sqlite":
        path, _, query = rest.partition("?")
        if not path.startswith("/") or len(path) < 2:
            raise InvalidArgument(
                "bad sqlite URL: the path follows three slashes,"
                " sqlite:///relative.db or sqlite:////abs.db"
            )
        asked = dict(urllib.parse.parse_qsl(query)).get("durability")
        if asked is not None and asked not in SQLITE_DURABILITIES:
            raise InvalidArgument(
                "durability of a sqlite URL is fsync or os (memory:// for memory)"
            )
        return SqliteStore(path[1:], durability=asked or durability)  # type: ignore[arg-type]
    try:
        from conveyor.store.postgres.store import PostgresStore
    except ImportError as exc:
        raise InvalidArgument(
            f"a PostgreSQL store needs asyncpg ({exc.name} is missing):"
            " pip install 'conveyor-queue[postgres]'"
        ) from None
    return PostgresStore(url)
