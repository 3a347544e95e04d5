"""SavepointBatchWriter: one SQLite connection, one transaction and at most
one fsync per turn of the event loop, for the operations of every caller.

The group commit of the SQLite store. What differs from PostgreSQL's
(store/postgres/writer.py, SetwiseRoundWriter): an operation here is any
function of a Transaction, run alone in its own savepoint, one after the
other on the loop's thread; there, operations of one kind are gathered
into rounds and settled by a few set-based statements each.

Operations (functions of a Transaction) are submitted from the event loop.
Those submitted in one turn of the loop run together, each in its own
savepoint, in one transaction, on the loop's own thread, and commit at
``synchronous=NORMAL`` (into the WAL, not yet fsynced). At durability
``fsync`` the writer then fdatasyncs the WAL file, still on the loop, and
only then answers: whatever arrives during that fsync forms the next group,
so one fsync serves every message of every caller that came meanwhile.
SQLite's work is short CPU work, and handing it to another thread cost more
than the work itself (two thread wake-ups per operation): measured with
bench/inprocess.py and bench/network.py, doing it here is several times
faster for single calls and no slower for batches. ``os`` and ``memory``
answer at COMMIT.

An operation submitted with ``durable=False`` does not by itself call for an
fsync: only claims (lease grants) are, since every lease is released when
the store opens; renewals, heartbeats and everything else are durable. A
relaxed operation is still answered with its group, after the group's
fsync, so no reply reveals a change that a power loss could undo.

An operation that raises a ConveyorError (QueueFull, LeaseLost...) is rolled
back to its savepoint alone; its neighbours in the batch still commit.
SQLite's own errors become Conveyor's in one place, errors.py (a full disk
or an I/O error: StoreError; a database another process holds locked:
StoreLocked). One in an operation fails that operation, unless SQLite
rolled the whole transaction back meanwhile (it may, on SQLITE_FULL or
SQLITE_IOERR), and then the batch fails; a failed COMMIT fails every
operation of the batch. The writer goes on: once there is room again, the
next batch commits.

A failed fsync is different: after it the kernel may have dropped the pages
it could not write, and a second fsync that succeeds proves nothing. So the
writer fails the group and refuses every operation after it with StoreError
("closed after a failed fsync"); the broker must be restarted, and reopening
the file recovers what reached the disk (every reply sent before the failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from conveyor.core.errors import BrokerClosed, ConveyorError, StoreError
from conveyor.store.base import CommitMeter
from conveyor.store.sqlite.errors import store_error

log = logging.getLogger("conveyor.store.sqlite")

T = TypeVar("T")

# A callback run after a commit succeeded (cache updates).
AfterCommit = Callable[[], object]


class Job:
    __slots__ = ("durable", "fn", "future", "result")

    def __init__(
        self, fn: Callable[[Transaction], Any], future: asyncio.Future[Any], durable: bool
    ) -> None:
        self.fn = fn
        self.future = future
        self.durable = durable
        self.result: tuple[bool, Any] = (False, None)


class Transaction:
    """What an operation sees: the connection, and a way to run code after
    the commit (for caches that must not change if the commit fails)."""

    __slots__ = ("after_commit", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.after_commit: list[AfterCommit] = []


class SavepointBatchWriter:
    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        max_batch: int = 2048,
        wal_path: str | None = None,
    ) -> None:
        self._connect = connect
        self._max_batch = max_batch
        self._wal_path = wal_path  # fdatasync this file before answering (durability fsync)
        self._wal_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[Job] = []
        self._flush_handle: asyncio.Handle | None = None
        self._closed = False
        self._fsync_failure: str | None = None  # why the store refuses everything
        # Measured for operations people and /metrics.
        self.meter = CommitMeter()  # the COMMIT statements
        self.fsyncs = 0
        self.fsync_seconds = 0.0
        self.fsync_seconds_max = 0.0

    def start(self, setup: Callable[[sqlite3.Connection], None]) -> None:
        """Connect and run ``setup`` (migrations, recovery)."""
        try:
            conn = self._connect()
        except sqlite3.Error as exc:  # not a database, cannot open the file...
            raise store_error(exc) from exc
        try:
            setup(conn)
            if self._wal_path is not None:
                # The WAL exists once setup has written; make it and its
                # directory entry durable before anything is answered.
                self._wal_fd = os.open(self._wal_path, os.O_RDONLY)
                os.fdatasync(self._wal_fd)
                _fsync_directory(os.path.dirname(self._wal_path) or ".")
        except BaseException as exc:
            conn.close()
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
            if isinstance(exc, sqlite3.Error):
                raise store_error(exc) from exc
            if isinstance(exc, OSError):
                raise StoreError(f"opening the store failed: {exc}") from exc
            raise
        self._conn = conn

    async def run(self, fn: Callable[[Transaction], T], *, durable: bool = True) -> T:
        """Run ``fn`` in this loop turn's group commit; its result once
        committed (and, at durability fsync, durable). ``durable=False``: the
        operation need not survive power loss (the store's claims)."""
        if self._fsync_failure is not None:
            raise StoreError(self._fsync_failure)
        if self._closed or self._conn is None:
            raise BrokerClosed("the store is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("a SQLite store serves the event loop that first used it")
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(Job(fn, future, durable))
        if self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush)
        return await future

    def stop(self) -> None:
        """Commit what was submitted, make it durable, close the connection."""
        if self._closed:
            return
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()  # after a failed fsync: fails what was submitted
        self._closed = True
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        if self._conn is not None:
            self._conn.close()

    def _flush(self) -> None:
        self._flush_handle = None
        pending, self._pending = self._pending, []
        if self._fsync_failure is not None:
            self._fail_all(pending, StoreError(self._fsync_failure))
            return
        if self._closed or self._conn is None:
            self._fail_all(pending, BrokerClosed("the store is closed"))
            return
        batches = [
            pending[at : at + self._max_batch] for at in range(0, len(pending), self._max_batch)
        ]
        durable = False
        for batch in batches:
            durable = self._commit(self._conn, batch) or durable
        if durable and self._wal_fd is not None:
            started = time.perf_counter()
            try:
                os.fdatasync(self._wal_fd)
            except OSError as exc:
                self._fsync_failure = (
                    f"the store is closed after a failed fsync of its WAL ({exc}); restart"
                    " the broker: what was answered before is recovered from the file"
                )
                log.critical("%s", self._fsync_failure)
                self._fail_all(pending, StoreError(self._fsync_failure))
                return
            took = time.perf_counter() - started
            self.fsyncs += 1
            self.fsync_seconds += took
            self.fsync_seconds_max = max(self.fsync_seconds_max, took)
        _set_results(pending)

    def _commit(self, conn: sqlite3.Connection, batch: list[Job]) -> bool:
        """Run and commit one batch; whether it committed durable changes."""
        tx = Transaction(conn)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._failed(batch, store_error(exc))
            return False
        try:
            for job in batch:
                self._run_one(conn, tx, job)
            started = time.perf_counter()
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # The COMMIT failed, or SQLite rolled the transaction back under
            # an operation (a full disk, an I/O error): none of it stands.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._failed(batch, store_error(exc))
            return False
        self.meter.record(len(batch), time.perf_counter() - started)
        for callback in tx.after_commit:
            callback()
        return any(job.durable for job in batch)

    def _run_one(self, conn: sqlite3.Connection, tx: Transaction, job: Job) -> None:
        """One operation in its savepoint; its own error undoes it alone."""
        conn.execute("SAVEPOINT op")
        mark = len(tx.after_commit)
        try:
            value = job.fn(tx)
        except ConveyorError as exc:
            self._undo(conn, tx, mark)
            job.result = (False, exc)
        except sqlite3.Error as exc:
            if not conn.in_transaction:
                raise  # rolled back whole: the batch fails
            self._undo(conn, tx, mark)
            job.result = (False, store_error(exc))
        except Exception as exc:  # a bug: reported to the caller as it is
            log.exception("store operation failed")
            self._undo(conn, tx, mark)
            job.result = (False, exc)
        else:
            conn.execute("RELEASE op")
            job.result = (True, value)

    @staticmethod
    def _undo(conn: sqlite3.Connection, tx: Transaction, mark: int) -> None:
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        del tx.after_commit[mark:]

    @staticmethod
    def _failed(batch: list[Job], exc: ConveyorError) -> None:
        log.error("commit failed: %s", exc)
        for job in batch:
            job.result = (False, exc)

    @classmethod
    def _fail_all(cls, jobs: list[Job], exc: ConveyorError) -> None:
        cls._failed(jobs, exc)
        _set_results(jobs)


def _set_results(jobs: list[Job]) -> None:
    for job in jobs:
        if job.future.done():
            continue
        ok, value = job.result
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
