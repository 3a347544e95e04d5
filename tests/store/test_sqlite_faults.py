"""The SQLite store when the disk fails it (writer.py): a full disk or an I/O
error fails the operations it hits with StoreError, stores nothing of them,
and the store goes on once there is room; a failed fsync closes the store for
good, and reopening the file recovers everything answered before it.

The full disk is real: a child process whose files may not grow past a
limit (RLIMIT_FSIZE, which makes the kernel refuse the write as a full disk
would). The failed fsync is injected: os.fdatasync raising EIO.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sqlite3
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from conveyor.broker.broker import Broker
from conveyor.core.errors import InvalidArgument, StoreError, StoreLocked
from conveyor.core.types import NewMessage
from conveyor.store.sqlite.errors import store_error
from conveyor.store.sqlite.store import SqliteStore
from conveyor.store.sqlite.writer import Transaction

BATCH = 4

# Fills a store whose files may not grow past LIMIT bytes, then prints one
# JSON line per step: what was answered, and with which error.
FILLER = textwrap.dedent(
    """
    import asyncio, json, os, resource, signal, sys
    from conveyor.broker.broker import Broker
    from conveyor.core.errors import StoreError
    from conveyor.core.types import NewMessage
    from conveyor.store.sqlite.store import SqliteStore

    path, limit, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    def say(**fields):
        print(json.dumps(fields), flush=True)

    async def main():
        broker = Broker(SqliteStore(path), monitor=False)
        await broker.start()
        await broker.create_queue("q")
        # Past the limit a write fails with EFBIG instead of killing us.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        refused = 0
        for n in range(200):
            body = os.urandom(16 * 1024)
            try:
                got = await broker.enqueue_many("q", [NewMessage(body=body)] * batch)
            except StoreError as exc:
                refused += 1
                say(step="enqueue", error=exc.code, message=exc.message)
                if refused == 3:
                    break
            else:
                say(step="enqueue", ids=[r.id for r in got])
        stats = await broker.stats("q")  # a read needs no room
        say(step="stats", ready=stats.ready)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        got = await broker.enqueue("q", b"room again")  # the store went on
        say(step="enqueue", ids=[got.id])
        await broker.close()

    asyncio.run(main())
    """
)


async def test_a_full_disk_fails_the_writes_it_hits_and_stores_nothing_of_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FILLER, str(path), str(1 << 20), str(BATCH),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(child.communicate(), 120)
    assert child.returncode == 0, stderr.decode()
    steps = [json.loads(line) for line in stdout.decode().splitlines()]
    answered = [i for s in steps if s["step"] == "enqueue" for i in s.get("ids", [])]
    errors = [s for s in steps if "error" in s]
    assert len(errors) == 3, steps
    assert {e["error"] for e in errors} == {"store_error"}
    assert all(e["message"].startswith("SQLite: ") for e in errors), errors
    assert len(answered) > BATCH, "the limit was met before anything was stored"
    [stats] = [s for s in steps if s["step"] == "stats"]
    assert stats["ready"] == len(answered) - 1  # all but the last, after the room came back

    # Reopened: exactly what was answered, nothing of the refused batches.
    broker = Broker(SqliteStore(path), monitor=False)
    await broker.start()
    try:
        session = await broker.open_session()
        stored = [d.id for d in await broker.receive(session, "q", max=1000)]
    finally:
        await broker.close()
    assert stored == answered


def failing_fdatasync(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on os.fdatasync fails with EIO; the calls are counted."""
    calls: list[int] = []

    def fail(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fdatasync", fail)
    return calls


async def test_a_failed_fsync_closes_the_store_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "q.db"
    broker = Broker(SqliteStore(path), monitor=False)
    await broker.start()
    try:
        await broker.create_queue("q")
        kept = await broker.enqueue("q", b"answered before the failure")
        session = await broker.open_session()

        calls = failing_fdatasync(monkeypatch)
        with pytest.raises(StoreError, match="failed fsync") as caught:
            await broker.enqueue_many("q", [NewMessage(body=b"a"), NewMessage(body=b"b")])
        assert caught.value.code == "store_error"
        assert len(calls) == 1
        # It does not try again: every operation is refused, reads too, and
        # no other fsync is attempted (one that succeeded would prove nothing).
        operations: list[Callable[[], Awaitable[object]]] = [
            lambda: broker.enqueue("q", b"after"),
            lambda: broker.receive(session, "q"),
            lambda: broker.stats("q"),
            broker.queues,
        ]
        for operation in operations:
            with pytest.raises(StoreError, match="closed after a failed fsync"):
                await operation()
        assert len(calls) == 1
    finally:
        await broker.close()
    monkeypatch.undo()

    # The broker restarted: what was answered is there; of the batch whose
    # fsync failed, all or nothing.
    broker = Broker(SqliteStore(path), monitor=False)
    await broker.start()
    try:
        session = await broker.open_session()
        got = await broker.receive(session, "q", max=10)
    finally:
        await broker.close()
    assert got[0].id == kept.id
    assert [d.body for d in got[1:]] in ([], [b"a", b"b"])


async def test_an_error_that_rolls_the_whole_transaction_back_fails_the_whole_batch(
    tmp_path: Path,
) -> None:
    """On SQLITE_FULL or SQLITE_IOERR SQLite may roll back the whole
    transaction under an operation: its neighbours' writes are gone too, so
    every operation of the batch fails, each caller is answered, and the
    writer goes on."""
    store = SqliteStore(tmp_path / "q.db")
    await store.open()
    try:

        def write(tx: Transaction) -> None:
            tx.conn.execute("CREATE TABLE t (x)")

        def full(tx: Transaction) -> None:
            tx.conn.execute("ROLLBACK")  # what SQLite does on a full disk, at worst
            raise sqlite3.OperationalError("database or disk is full")

        outcomes = await asyncio.wait_for(
            asyncio.gather(store.writer.run(write), store.writer.run(full), return_exceptions=True),
            30,
        )
        assert [type(o) for o in outcomes] == [StoreError, StoreError], outcomes
        assert all("disk is full" in str(o) for o in outcomes)
        tables = await store.writer.run(
            lambda tx: tx.conn.execute("SELECT name FROM sqlite_master WHERE name = 't'").fetchall()
        )
        assert tables == []
        await store.writer.run(write)  # the writer goes on
    finally:
        await store.close()


def sqlite_error(make: Callable[[], object]) -> sqlite3.Error:
    """The error SQLite itself raises for ``make``."""
    try:
        make()
    except sqlite3.Error as exc:
        return exc
    raise AssertionError("SQLite raised nothing")


def test_sqlite_errors_become_the_most_specific_conveyor_error(tmp_path: Path) -> None:
    """store/sqlite/errors.py, the one place the store maps SQLite's errors:
    a database another connection holds locked is StoreLocked, a value too
    large for SQLite is InvalidArgument, the rest (not a database, a full
    disk, an I/O error) StoreError; each says what SQLite said."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    busy = sqlite_error(lambda: other.execute("BEGIN IMMEDIATE"))
    holder.execute("ROLLBACK")
    holder.close()
    other.close()

    small = sqlite3.connect(":memory:")
    small.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)
    too_big = sqlite_error(lambda: small.execute("SELECT ?", (b"x" * 2000,)))
    small.close()

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 1000)
    not_db = sqlite_error(lambda: sqlite3.connect(garbage).execute("SELECT * FROM sqlite_master"))

    mapped = {name: store_error(exc) for name, exc in
              [("busy", busy), ("too_big", too_big), ("not_db", not_db)]}  # fmt: skip
    assert type(mapped["busy"]) is StoreLocked
    assert mapped["busy"].message.startswith("SQLite: database is locked (SQLITE_BUSY)")
    assert type(mapped["too_big"]) is InvalidArgument
    assert "SQLITE_TOOBIG" in mapped["too_big"].message
    assert type(mapped["not_db"]) is StoreError
    assert mapped["not_db"].message == "SQLite: file is not a database (SQLITE_NOTADB)"
    # An error without a result code (raised by hand, as a test does) is StoreError.
    assert type(store_error(sqlite3.OperationalError("disk I/O error"))) is StoreError


async def test_a_file_that_is_not_a_database_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    path.write_bytes(b"not a database" * 1000)
    with pytest.raises(StoreError, match=r"^SQLite: file is not a database \(SQLITE_NOTADB\)"):
        await SqliteStore(path).open()
    # Refused, and nothing of the store is held: the file opens once repaired.
    path.unlink()
    store = SqliteStore(path)
    await store.open()
    await store.close()


@pytest.mark.slow
async def test_a_database_another_process_holds_locked_refuses_writes_with_store_locked(
    tmp_path: Path,
) -> None:
    """Another program inside a write transaction on the broker's file (a
    ``sqlite3`` shell, say) for longer than the busy timeout: the writes it
    blocks fail with StoreLocked, and the store goes on once it lets go."""
    path = tmp_path / "q.db"
    broker = Broker(SqliteStore(path), monitor=False)
    await broker.start()
    try:
        await broker.create_queue("q")
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreLocked, match="another process holds the database locked"):
                await broker.enqueue("q", b"blocked")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        await broker.enqueue("q", b"after")
        assert (await broker.stats("q")).ready == 1
    finally:
        await broker.close()
