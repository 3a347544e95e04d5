"""SqliteStore: the embedded default store, one SQLite file per broker.

Durability levels:
  fsync   WAL: no reply before the WAL is fdatasynced past the change (one
          fsync for every commit made while the previous one ran);
          survives power loss.
  os      WAL, synchronous=NORMAL: commits reach the OS, fsynced at
          checkpoints; survives a killed process, may lose the last commits
          (never consistency) on power loss.
  memory  an in-memory database: nothing survives the process (tests, demos).

One broker process owns a file: ``open`` takes an exclusive lock on
``<file>.lock`` and refuses a second owner with StoreLocked. Every operation
runs through the SavepointBatchWriter on the broker's event loop, so the
store needs no other locking.
Sessions cannot outlive their broker: at open, sessions left from a previous
run are deleted and their leases released (tokens kept, so a late ack from a
reconnecting consumer still succeeds if nobody else got the message).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import msgspec

from conveyor.core.errors import InvalidArgument, QueueNotFound, StoreError, StoreLocked
from conveyor.core.ids import IdSequence, parse_id
from conveyor.core.ring import bucket_of
from conveyor.core.transitions import DEAD, LeaseEnd, after_redrive, token_floor
from conveyor.core.types import (
    Binding,
    EnqueueResult,
    Message,
    QueueConfig,
    QueueStats,
    Result,
    SessionInfo,
)
from conveyor.store import mapping
from conveyor.store.base import (
    DEFAULT_MAX_REPLY_BYTES,
    MESSAGE_OVERHEAD,
    ClaimOp,
    ClaimResult,
    EnqueueOp,
    OpenSessionOp,
    Settled,
    SettleOp,
    StoreCapabilities,
    Swept,
)
from conveyor.store.sql import migrations
from conveyor.store.sqlite import messages as tx_ops
from conveyor.store.sqlite.queries import Q
from conveyor.store.sqlite.writer import SavepointBatchWriter, Transaction

Durability = Literal["fsync", "os", "memory"]
DURABILITIES: tuple[Durability, ...] = ("fsync", "os", "memory")
T = TypeVar("T")
SQLITE_NEEDED = (3, 35, 0)  # RETURNING, ALTER TABLE DROP COLUMN


class StoreState:
    """What the writer keeps between operations; touched by its operations only."""

    def __init__(self) -> None:
        self.configs: dict[str, QueueConfig] = {}
        self.ids = IdSequence()
        self.epoch = 0  # how many times the store was opened before

    @property
    def token_floor(self) -> int:
        """The least fencing token of a delivery in this epoch."""
        return token_floor(self.epoch)

    def config(self, queue: str) -> QueueConfig:
        try:
            return self.configs[queue]
        except KeyError:
            raise QueueNotFound(f"no queue named {queue!r}") from None


class SqliteStore:
    def __init__(
        self, path: str | os.PathLike[str] | None, *, durability: Durability = "fsync"
    ) -> None:
        if durability not in DURABILITIES:
            raise InvalidArgument(
                f"durability must be one of {', '.join(DURABILITIES)}, not {durability!r}"
            )
        if (path is None) != (durability == "memory"):
            raise InvalidArgument("durability 'memory' goes with no path, and only it")
        self.path = Path(path) if path is not None else None
        self.durability = durability
        self.capabilities = StoreCapabilities("sqlite", shared=False, persistent=path is not None)
        self._state = StoreState()
        self._writer: SavepointBatchWriter | None = None
        self._lock_fd: int | None = None

    @property
    def writer(self) -> SavepointBatchWriter:
        if self._writer is None:
            raise RuntimeError("the store is not open")
        return self._writer

    def set_waker(self, wake: Callable[[str], None]) -> None:
        """One broker owns the file: nobody else changes it behind our back."""

    def metrics(self) -> dict[str, float]:
        w = self._writer
        if w is None:
            return {}
        return {
            **w.meter.metrics(),
            "fsyncs_total": w.fsyncs,
            "fsync_seconds_total": w.fsync_seconds,
            "fsync_seconds_max": w.fsync_seconds_max,
        }

    # -- life cycle -------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        if sqlite3.sqlite_version_info < SQLITE_NEEDED:
            raise StoreError(
                f"the SQLite store needs SQLite {'.'.join(map(str, SQLITE_NEEDED))} or newer;"
                f" this Python has {sqlite3.sqlite_version}"
            )
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock()
        self._state = StoreState()
        wal = f"{self.path}-wal" if self.path is not None and self.durability == "fsync" else None
        writer = SavepointBatchWriter(self._connect, wal_path=wal)
        try:
            writer.start(self._setup)
        except BaseException:
            self._unlock()
            raise
        self._writer = writer

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.stop()
        self._unlock()

    def _lock(self) -> None:
        assert self.path is not None
        lock_path = f"{self.path}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLocked(
                f"{self.path} is in use by another broker (pid {owner}); one broker process"
                " owns a SQLite store: stop it, or point this one at another --data directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _connect(self) -> sqlite3.Connection:
        target = ":memory:" if self.path is None else str(self.path)
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        if self.path is not None:
            # SQLite's normal locking, not locking_mode=EXCLUSIVE (a little
            # faster): other processes may read the file while the broker
            # runs, so `sqlite3 conveyor.db .backup` takes a live backup.
            conn.execute("PRAGMA journal_mode=WAL")
            # At fsync the writer fdatasyncs the WAL itself, once for many commits.
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA cache_size=-65536")
        return conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        """Migrate, load configs and ids, and end the previous run's sessions."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in migrations("conveyor.store.sqlite.migrations"):
            if number > version:
                conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
        state = self._state
        for name, config, created_at in conn.execute(Q.queues_all):
            state.configs[name] = mapping.queue_config(name, config, created_at)
        state.ids = IdSequence(conn.execute(Q.max_seq).fetchone()[0])
        conn.execute("BEGIN IMMEDIATE")
        # A new epoch per open: tokens handed out from now on are above any
        # token of the previous run, even one whose lease was never fsynced.
        epoch = conn.execute(Q.epoch_get).fetchone()
        state.epoch = 0 if epoch is None else int(epoch[0]) + 1
        conn.execute(Q.epoch_put, (state.epoch,))
        tx = Transaction(conn)
        fx = tx_ops.StateCounts()
        leases = conn.execute(Q.leases_all).fetchall()
        tx_ops.release(state, tx, fx, leases, time.time(), LeaseEnd.BROKER_RESTARTED)
        fx.flush(tx)
        conn.execute(Q.consumers_clear)
        conn.execute(Q.owners_clear)
        conn.execute(Q.sessions_clear)
        conn.execute("COMMIT")

    async def _run(self, fn: Callable[[StoreState, Transaction], T], *, durable: bool = True) -> T:
        state = self._state
        return await self.writer.run(lambda tx: fn(state, tx), durable=durable)

    # -- queues -----------------------------------------------------------

    async def create_queue(self, config: QueueConfig) -> QueueConfig | None:
        def create(state: StoreState, tx: Transaction) -> QueueConfig | None:
            if config.name in state.configs:
                return None
            settings = mapping.settings_text(config)
            tx.conn.execute(Q.queue_insert, (config.name, settings, config.created_at))
            tx.after_commit.append(lambda: state.configs.__setitem__(config.name, config))
            return config

        return await self._run(create)

    async def update_queue(self, config: QueueConfig) -> None:
        def update(state: StoreState, tx: Transaction) -> None:
            old = state.config(config.name)
            new = msgspec.structs.replace(config, created_at=old.created_at)
            tx.conn.execute(Q.queue_update, (mapping.settings_text(new), config.name))
            if new.buckets != old.buckets:
                _rebucket(tx.conn, new)
            tx.after_commit.append(lambda: state.configs.__setitem__(config.name, new))

        await self._run(update)

    async def delete_queue(self, name: str) -> None:
        def delete(state: StoreState, tx: Transaction) -> None:
            state.config(name)
            for query in (
                Q.messages_drop_queue,
                Q.dedup_drop_queue,
                Q.consumers_drop_queue,
                Q.owners_drop_queue,
                Q.bindings_drop_queue,
                Q.queue_delete,
            ):
                tx.conn.execute(query, (name,))
            tx.after_commit.append(lambda: state.configs.pop(name, None))

        await self._run(delete)

    async def get_queue(self, name: str) -> QueueConfig:
        return await self._run(lambda state, tx: state.config(name))

    async def list_queues(self) -> list[QueueConfig]:
        return await self._run(
            lambda state, tx: sorted(state.configs.values(), key=lambda c: c.name)
        )

    async def purge_queue(self, name: str) -> int:
        def purge(state: StoreState, tx: Transaction) -> int:
            state.config(name)
            count = tx.conn.execute(Q.purge, (name,)).rowcount
            tx.conn.execute(Q.purged, (name,))
            return count

        return await self._run(purge)

    # -- messages ---------------------------------------------------------

    async def enqueue(self, op: EnqueueOp) -> list[list[EnqueueResult]]:
        return await self._run(lambda state, tx: tx_ops.enqueue(state, tx, op))

    async def claim(self, op: ClaimOp) -> ClaimResult:
        # A lease need not survive a crash: every lease is released when the
        # store opens, and the token epoch keeps tokens growing across it.
        return await self._run(lambda state, tx: tx_ops.claim(state, tx, op), durable=False)

    async def ack(self, op: SettleOp) -> Settled:
        return await self._run(lambda state, tx: tx_ops.ack(state, tx, op))

    async def nack(self, op: SettleOp) -> Settled:
        return await self._run(lambda state, tx: tx_ops.nack(state, tx, op))

    async def extend(self, op: SettleOp) -> Settled:
        return await self._run(lambda state, tx: tx_ops.extend(state, tx, op))

    async def dead(self, op: SettleOp) -> Settled:
        return await self._run(lambda state, tx: tx_ops.dead(state, tx, op))

    # -- sessions ---------------------------------------------------------

    async def open_session(self, op: OpenSessionOp) -> None:
        def insert(state: StoreState, tx: Transaction) -> None:
            tx.conn.execute(
                Q.session_insert, (op.id, op.name, op.capacity, op.timeout, op.now, op.now)
            )

        await self._run(insert)

    async def touch_session(self, session: str, now: float) -> bool:
        return await self._run(
            lambda state, tx: tx.conn.execute(Q.session_touch, (now, session)).rowcount > 0
        )

    async def subscribe(self, session: str, queue: str, now: float) -> None:
        def subscribe(state: StoreState, tx: Transaction) -> None:
            state.config(queue)
            tx.conn.execute(Q.consumer_insert, (session, queue, now))

        await self._run(subscribe)

    async def close_session(self, session: str, now: float) -> list[str]:
        def close(state: StoreState, tx: Transaction) -> list[str]:
            fx = tx_ops.StateCounts()
            tx_ops.close_session(state, tx, fx, session, now)
            fx.flush(tx)
            return sorted(fx.woken)

        return await self._run(close)

    async def consumers(self, queue: str, since: float) -> dict[str, int]:
        def consumers(state: StoreState, tx: Transaction) -> dict[str, int]:
            return dict(tx.conn.execute(Q.consumers_of_queue, (queue, since)).fetchall())

        return await self._run(consumers)

    async def sessions(self) -> list[SessionInfo]:
        def sessions(state: StoreState, tx: Transaction) -> list[SessionInfo]:
            conn = tx.conn
            leases = conn.execute(Q.leases_by_holder).fetchall()
            consumers = conn.execute(Q.consumers_all).fetchall()
            return mapping.sessions(conn.execute(Q.sessions_all), leases, consumers)

        return await self._run(sessions)

    async def sweep(self, now: float) -> Swept:
        return await self._run(lambda state, tx: tx_ops.sweep(state, tx, now))

    # -- dead letters -----------------------------------------------------

    async def dead_letters(
        self, queue: str, limit: int, after: str | None, max_bytes: int = DEFAULT_MAX_REPLY_BYTES
    ) -> list[Message]:
        def page(state: StoreState, tx: Transaction) -> list[Message]:
            config = state.config(queue)
            start = parse_id(after) if after is not None else -1
            args = (queue, start, limit, MESSAGE_OVERHEAD, max_bytes)
            letters = tx.conn.execute(Q.dead_page, args).fetchall()
            return [mapping.dead_letter(queue, config, row) for row in letters]

        return await self._run(page)

    async def redrive(self, queue: str, ids: list[str] | None, now: float) -> int:
        def redrive(state: StoreState, tx: Transaction) -> int:
            state.config(queue)
            conn = tx.conn
            if ids is None:
                letters = conn.execute(Q.dead_all, (queue,)).fetchall()
            else:
                # In enqueue order, each once (as on PostgreSQL): the first
                # of a group leads, and an id given twice is redriven once.
                letters = [
                    r
                    for seq in sorted({parse_id(i) for i in ids})
                    if (r := conn.execute(Q.dead_one, (queue, seq)).fetchone())
                ]
            fx = tx_ops.StateCounts()
            for seq, grp in letters:
                behind = (
                    grp is not None
                    and conn.execute(Q.group_has_head, (queue, grp)).fetchone() is not None
                )
                st = after_redrive(behind)
                conn.execute(Q.redrive_one, (st, now, seq))
                conn.execute(Q.result_delete, (seq,))
                fx.move(queue, DEAD, st)
            fx.flush(tx)
            return len(letters)

        return await self._run(redrive)

    # -- topics -----------------------------------------------------------

    async def bind(self, binding: Binding) -> None:
        def bind(state: StoreState, tx: Transaction) -> None:
            state.config(binding.queue)
            tx.conn.execute(Q.binding_insert, (binding.pattern, binding.queue))

        await self._run(bind)

    async def unbind(self, binding: Binding) -> bool:
        return await self._run(
            lambda state, tx: (
                tx.conn.execute(Q.binding_delete, (binding.pattern, binding.queue)).rowcount > 0
            )
        )

    async def bindings(self) -> list[Binding]:
        return await self._run(
            lambda state, tx: [Binding(p, q) for p, q in tx.conn.execute(Q.bindings_all).fetchall()]
        )

    # -- results and statistics -------------------------------------------

    async def get_result(self, message_id: str) -> Result | None:
        def get(state: StoreState, tx: Transaction) -> Result | None:
            row = tx.conn.execute(Q.result_get, (parse_id(message_id),)).fetchone()
            return None if row is None else mapping.result(message_id, row)

        return await self._run(get)

    async def stats(self, queue: str, now: float) -> QueueStats:
        def stats(state: StoreState, tx: Transaction) -> QueueStats:
            state.config(queue)
            conn = tx.conn
            counts = conn.execute(Q.queue_counters, (queue,)).fetchone()
            oldest = conn.execute(Q.oldest_ready, (queue,)).fetchone()[0]
            consumers = conn.execute(Q.count_consumers, (queue,)).fetchone()[0]
            return mapping.queue_stats(queue, counts, consumers, oldest, now)

        return await self._run(stats)


def _rebucket(conn: sqlite3.Connection, config: QueueConfig) -> None:
    """The bucket count changed: hash every group of the queue anew (a message
    left in a bucket beyond the count would never be delivered), and let the
    holders of grouped leases own their groups' new buckets."""
    for (grp,) in conn.execute(Q.groups_of_queue, (config.name,)).fetchall():
        conn.execute(Q.rebucket_group, (bucket_of(grp, config.buckets), config.name, grp))
    conn.execute(Q.owners_drop_queue, (config.name,))
    conn.execute(Q.owners_from_leases, (config.name,))
