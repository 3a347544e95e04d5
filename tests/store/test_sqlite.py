"""What only the SQLite store promises: one broker per file, its durability
settings, schema migrations, and fencing tokens that keep growing across a
crash even though lease grants are not fsynced."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import sys
import textwrap
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from conveyor.broker.broker import Broker
from conveyor.core.errors import InvalidArgument, LeaseLost, StoreError, StoreLocked
from conveyor.core.ids import format_id
from conveyor.core.types import NewMessage
from conveyor.store.sql import migrations, parse_queries
from conveyor.store.sqlite.store import SqliteStore


async def test_a_second_store_on_the_same_file_is_refused(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "q.db")
    await first.open()
    try:
        with pytest.raises(StoreLocked, match="in use by another broker"):
            await SqliteStore(tmp_path / "q.db").open()
    finally:
        await first.close()
    # Released with its owner: the next one opens.
    again = SqliteStore(tmp_path / "q.db")
    await again.open()
    await again.close()


async def test_another_process_is_refused_while_this_one_owns_the_file(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "q.db")
    await store.open()
    script = textwrap.dedent(
        f"""
        import asyncio
        from conveyor.core.errors import StoreLocked
        from conveyor.store.sqlite.store import SqliteStore
        try:
            asyncio.run(SqliteStore({str(tmp_path / "q.db")!r}).open())
        except StoreLocked as exc:
            print("refused:", exc)
        """
    )
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
        )
        stdout, _ = await asyncio.wait_for(child.communicate(), 60)
    finally:
        await store.close()
    assert b"refused:" in stdout
    assert b"pid" in stdout


async def test_a_backup_can_be_taken_while_the_broker_runs(tmp_path: Path) -> None:
    """docs/operations.md: `sqlite3 conveyor.db ".backup ..."` on a live broker."""
    broker = Broker(SqliteStore(tmp_path / "q.db"), monitor=False)
    await broker.start()
    try:
        await broker.create_queue("q")
        await broker.enqueue("q", b"kept")
        live = sqlite3.connect(tmp_path / "q.db", timeout=2)
        # A read first: it fails at once (database is locked) if the broker
        # held SQLite's lock for good, where backup() would retry forever.
        assert live.execute("SELECT count(*) FROM messages").fetchone() == (1,)
        copy = sqlite3.connect(tmp_path / "copy.db")
        live.backup(copy)
        live.close()
        await broker.enqueue("q", b"still served")
    finally:
        await broker.close()
    assert copy.execute("SELECT body FROM messages").fetchall() == [(b"kept",)]
    copy.close()


async def test_an_old_sqlite_is_refused_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(
        StoreError, match=r"needs SQLite 3\.35\.0 or newer; this Python has 3\.31\.1"
    ):
        await SqliteStore(tmp_path / "q.db").open()
    assert not (tmp_path / "q.db").exists()


def test_bad_store_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        SqliteStore(tmp_path / "q.db", durability="never")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        SqliteStore(None, durability="fsync")
    with pytest.raises(InvalidArgument):
        SqliteStore(tmp_path / "q.db", durability="memory")


def spy_fdatasync(monkeypatch: pytest.MonkeyPatch, wal: Path, log: list[str]) -> None:
    """Log "fdatasync" in ``log`` each time os.fdatasync is called on the file
    ``wal`` is when it exists (the real call is made first)."""
    real = os.fdatasync

    def spy(fd: int) -> None:
        real(fd)
        synced = os.fstat(fd)
        if wal.exists() and os.path.samestat(synced, os.stat(wal)):
            log.append("fdatasync")

    monkeypatch.setattr(os, "fdatasync", spy)


@pytest.mark.parametrize(("durability", "fsyncs"), [("fsync", 2), ("os", 0)])
async def test_durability_decides_who_fsyncs_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str, fsyncs: int
) -> None:
    """SQLite commits into the WAL without syncing (synchronous=NORMAL); at
    fsync the writer fdatasyncs the WAL once per group of durable commits,
    and a group of only relaxed operations (lease grants) needs none. The
    calls to os.fdatasync are counted, not the store's own counter."""
    synced: list[str] = []
    spy_fdatasync(monkeypatch, tmp_path / "q.db-wal", synced)
    store = SqliteStore(tmp_path / "q.db", durability=durability)  # type: ignore[arg-type]
    await store.open()
    synced.clear()  # the open's own
    try:
        mode, sync = await store.writer.run(
            lambda tx: (
                tx.conn.execute("PRAGMA journal_mode").fetchone()[0],
                tx.conn.execute("PRAGMA synchronous").fetchone()[0],
            )
        )
        await store.writer.run(lambda tx: None, durable=False)
        # Ten durable operations in one loop turn: one group, one fsync.
        await asyncio.gather(*(store.writer.run(lambda tx: None) for _ in range(10)))
        metrics = store.metrics()
    finally:
        await store.close()
    assert (mode, sync) == ("wal", 1)
    assert len(synced) == fsyncs
    assert metrics["fsyncs_total"] == fsyncs
    assert metrics["commits_total"] == 3


async def test_each_reply_follows_an_fdatasync_of_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At durability fsync an enqueue, an ack, a nack are answered only after
    the WAL holding them was fdatasynced (docs/semantics.md, "Enqueue")."""
    events: list[str] = []
    spy_fdatasync(monkeypatch, tmp_path / "q.db-wal", events)
    broker = Broker(SqliteStore(tmp_path / "q.db"), monitor=False)
    await broker.start()
    try:
        await broker.create_queue("q")
        session = await broker.open_session()
        answered: list[list[str]] = []

        async def answer(call: Awaitable[Any]) -> Any:
            events.clear()
            value = await call
            answered.append(events[:])
            return value

        await answer(broker.enqueue("q", b"x"))
        await answer(broker.enqueue_many("q", [NewMessage(body=b"y"), NewMessage(body=b"z")]))
        first, second, _ = await broker.receive(session, "q", max=3)
        await answer(broker.ack(first.id, first.token))
        await answer(broker.nack(second.id, second.token))
    finally:
        await broker.close()
    assert answered == [["fdatasync"]] * 4


async def test_a_lease_lost_with_the_power_never_hands_out_its_token_again(
    tmp_path: Path,
) -> None:
    """Lease grants are committed without fsync: a power loss can undo one
    that a consumer got. The store's next open starts a new epoch of tokens,
    so the message's next delivery never carries the lost grant's token
    (which its first consumer may still hold and try to settle)."""
    live, after_power_loss = tmp_path / "live", tmp_path / "after-power-loss"
    broker = Broker(SqliteStore(live / "q.db"), monitor=False)
    await broker.start()
    try:
        await broker.create_queue("q")
        sent = await broker.enqueue("q", b"x")
        session = await broker.open_session()
        # What the disk holds now, when the power goes out just after the grant.
        after_power_loss.mkdir()
        for name in ("q.db", "q.db-wal", "q.db-shm"):
            if (live / name).exists():
                shutil.copyfile(live / name, after_power_loss / name)
        (lost,) = await broker.receive(session, "q")
    finally:
        await broker.close()

    broker = Broker(SqliteStore(after_power_loss / "q.db"), monitor=False)
    await broker.start()
    try:
        session = await broker.open_session()
        (again,) = await broker.receive(session, "q")
        assert again.id == lost.id == sent.id
        assert again.attempts == lost.attempts == 1  # the grant did not survive
        assert again.token > lost.token
        with pytest.raises(LeaseLost):
            await broker.ack(lost.id, lost.token)
        await broker.ack(again.id, again.token)
    finally:
        await broker.close()


def test_the_migrated_schema_is_the_one_the_migrations_describe(tmp_path: Path) -> None:
    found = migrations("conveyor.store.sqlite.migrations")
    assert [n for n, _ in found] == list(range(1, len(found) + 1))
    asyncio.run(_open_close(tmp_path / "q.db"))
    fresh = sqlite3.connect(":memory:")
    for _, script in found:
        fresh.executescript(script)
    migrated = sqlite3.connect(tmp_path / "q.db")
    assert migrated.execute("PRAGMA user_version").fetchone()[0] == len(found)
    assert _schema(migrated) == _schema(fresh)


async def test_a_version_1_file_gets_its_state_counts_from_its_rows(tmp_path: Path) -> None:
    """Version 2 keeps per-state counts in ``queues``; a file written by
    version 1 has them computed from its messages when it is opened."""
    found = migrations("conveyor.store.sqlite.migrations")
    old = sqlite3.connect(tmp_path / "q.db")
    old.executescript(found[0][1] + "\nPRAGMA user_version = 1;")
    rows = [(1, 0, 0), (2, 0, 5), (3, 1, 0), (4, 2, 0), (5, 3, 0), (6, 4, 0), (7, 0, 0)]
    old.execute("INSERT INTO queues (name, config, created_at, depth) VALUES ('q', '{}', 0, 6)")
    old.executemany(
        "INSERT INTO messages (seq, queue, state, priority, available_at, body, enqueued_at,"
        " holder, lease_deadline, grp) VALUES (?, ?, ?, ?, CASE WHEN ?3 = 1 THEN 1e12 ELSE 100 END,"
        " x'00', 100,"
        " CASE WHEN ?3 = 2 THEN 'gone' END, CASE WHEN ?3 = 2 THEN 1e12 END,"
        " CASE WHEN ?3 = 4 THEN 'g' END)",
        [(seq, "q" if seq < 7 else "other", st, prio) for seq, st, prio in rows],
    )
    old.commit()
    old.close()
    broker = Broker(SqliteStore(tmp_path / "q.db"), monitor=False)
    await broker.start()
    try:
        stats = await broker.stats("q")
        # The lease of the previous run is released at open: 3 ready + 1 blocked.
        assert (stats.ready, stats.scheduled, stats.leased, stats.dead) == (4, 1, 0, 1)
        session = await broker.open_session()
        got = await broker.receive(session, "q", max=10)
        assert sorted(d.id for d in got) == [format_id(seq) for seq in (1, 2, 4)]
        stats = await broker.stats("q")
        assert (stats.ready, stats.scheduled, stats.leased, stats.dead) == (1, 1, 3, 1)
    finally:
        await broker.close()


async def _open_close(path: Path) -> None:
    store = SqliteStore(path)
    await store.open()
    await store.close()


def _schema(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return sorted(conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))


def test_every_named_query_is_plain_sql() -> None:
    text = (Path(__file__).parents[2] / "src/conveyor/store/sqlite/queries.sql").read_text()
    queries = parse_queries(text)
    conn = sqlite3.connect(":memory:")
    for _, script in migrations("conveyor.store.sqlite.migrations"):
        conn.executescript(script)
    for name, sql in queries.items():
        # EXPLAIN compiles the statement without running it.
        numbered = [int(n) for n in re.findall(r"\?(\d+)", sql)]
        params = max(numbered) if numbered else sql.count("?")
        conn.execute("EXPLAIN " + sql, (None,) * params)
        assert "{" not in sql, name
    with pytest.raises(ValueError, match="twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")


async def test_tokens_from_before_a_crash_never_match_a_new_delivery(tmp_path: Path) -> None:
    """Lease grants are committed without fsync; a new epoch per open keeps
    every token after a restart above every token handed out before it."""
    broker = Broker(SqliteStore(tmp_path / "q.db"), monitor=False)
    await broker.start()
    await broker.create_queue("q")
    await broker.enqueue("q", b"x")
    session = await broker.open_session()
    (before,) = await broker.receive(session, "q")
    await broker.close()

    broker = Broker(SqliteStore(tmp_path / "q.db"), monitor=False)
    await broker.start()
    try:
        session = await broker.open_session()
        (after,) = await broker.receive(session, "q")
        assert after.id == before.id
        assert after.token > before.token
        with pytest.raises(LeaseLost):
            await broker.ack(before.id, before.token)
        await broker.ack(after.id, after.token)
    finally:
        await broker.close()
