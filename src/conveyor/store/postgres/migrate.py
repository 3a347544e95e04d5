"""Schema migrations of the PostgreSQL store.

Migrations are the numbered files of ``migrations/``; ``schema_migrations``
in the store's schema records which ones ran. ``migrate`` runs the missing
ones in one transaction under an advisory lock of the schema, so nodes that
start together migrate once and the others wait and find nothing to do. It
runs at every open (unless the URL says ``migrate=false``) and from
``conveyor migrate``.
"""

from __future__ import annotations

from typing import LiteralString, cast

from conveyor.core.errors import StoreError
from conveyor.store.postgres import driver
from conveyor.store.postgres.options import PostgresOptions, parse_url, quote_ident
from conveyor.store.sql import migrations

PACKAGE = "conveyor.store.postgres.migrations"
# First key of every advisory lock the store takes ('Conv'); the second is
# derived from the schema, so installations sharing a database do not meet.
LOCK_CLASS = 1131376246

_LOCK = "SELECT pg_advisory_xact_lock($1, hashtext($2))"
_SEARCH_PATH = "SELECT set_config('search_path', $1, true)"
_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
_APPLIED = "SELECT version FROM schema_migrations ORDER BY version"
_RECORD = "INSERT INTO schema_migrations (version) VALUES ($1)"
_LEDGER_EXISTS = "SELECT to_regclass($1) IS NOT NULL"
_VERSION = "SELECT coalesce(max(version), 0) FROM {}.schema_migrations"


def latest() -> int:
    return len(migrations(PACKAGE))


async def migrate(conn: driver.Connection, schema: str) -> list[int]:
    """Bring the schema to the latest version; the versions applied now."""
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute(_LOCK, LOCK_CLASS, f"{schema}.migrate")
        # The name is validated ([a-z_][a-z0-9_]*): DDL takes no parameters.
        create = cast(LiteralString, "CREATE SCHEMA IF NOT EXISTS " + quote_ident(schema))  # type: ignore[redundant-cast]
        await conn.execute(create)
        await conn.execute(_SEARCH_PATH, schema)
        await conn.execute(_LEDGER)
        done = {row[0] for row in await conn.fetch(_APPLIED)}
        for number, script in migrations(PACKAGE):
            if number in done:
                continue
            await conn.execute(cast(LiteralString, script))  # type: ignore[redundant-cast]
            await conn.execute(_RECORD, number)
            applied_now.append(number)
    return applied_now


async def version(conn: driver.Connection, schema: str) -> int:
    """The schema's version (0: no Conveyor schema there yet)."""
    if not await conn.fetchval(_LEDGER_EXISTS, f"{schema}.schema_migrations"):
        return 0
    # The name is validated ([a-z_][a-z0-9_]*): identifiers take no parameters.
    query = cast(LiteralString, _VERSION.format(quote_ident(schema)))  # type: ignore[redundant-cast]
    return int(await conn.fetchval(query))


async def check(conn: driver.Connection, schema: str) -> None:
    """Refuse a schema that is not at the version this code needs."""
    found, needed = await version(conn, schema), latest()
    if found < needed:
        raise StoreError(
            f"the PostgreSQL schema {schema!r} is at version {found}, this Conveyor needs"
            f" {needed}: run `conveyor migrate --store URL` (or open with migrate=true)"
        )
    if found > needed:
        raise StoreError(
            f"the PostgreSQL schema {schema!r} is at version {found}, newer than this"
            f" Conveyor knows ({needed}): upgrade Conveyor on this node"
        )


async def migrate_url(url: str) -> tuple[str, list[int]]:
    """``conveyor migrate``: migrate the schema a URL names; (schema, applied)."""
    options = parse_url(url)
    conn = await driver.connect(options)
    try:
        return options.schema, await migrate(conn, options.schema)
    except Exception as exc:
        if driver.is_driver_error(exc):
            raise driver.store_error(exc) from exc
        raise
    finally:
        await conn.close()


__all__ = ["PostgresOptions", "check", "latest", "migrate", "migrate_url", "version"]
