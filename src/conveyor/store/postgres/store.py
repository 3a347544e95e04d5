"""PostgresStore: the shared store, for several broker nodes on one database.

    PostgresStore("postgresql://user@db-host/conveyor?schema=orders")

Every node is a peer: sessions, heartbeats and leases live in the database,
so any node serves any client and a dead node loses nothing; its sessions
time out and any other node's lease monitor releases their leases. Unlike
SQLite, opening the store therefore releases nothing: the leases in the
database may belong to live sessions of other nodes. What a node keeps to
itself is its epoch (fencing tokens of its deliveries start above
epoch * 10^9, as on SQLite) and its identity, to tell its own notifications
from the others'.

Connections per node: a pool (``pool_max``, default 10) for claims, reads
and the monitor, two for the group-commit rounds, and one that LISTENs. Durability
is the database's: a reply follows a COMMIT that returned, so with
synchronous_commit on (the default) the commit is on disk, and with a
synchronous standby it is on two machines. Lease grants are committed the
same way (not relaxed as on SQLite: a database restart does not reopen the
store, so the epoch could not cover a lost grant).

Concurrency assumptions and what differs from SQLite: see messages.py.
Clocks: times come from each node's clock (``now``); nodes sharing a store
need clocks in step (NTP) well within a session timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from conveyor.core.errors import BrokerClosed, ConveyorError, QueueNotFound
from conveyor.core.ids import parse_id
from conveyor.core.transitions import is_group_head
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
from conveyor.store.postgres import driver, messages, migrate, queues
from conveyor.store.postgres.enqueue import allocate_ids, enqueue_round
from conveyor.store.postgres.listener import NotificationListener, Notifier, channel_for
from conveyor.store.postgres.node import CountDeltas, NodeState
from conveyor.store.postgres.options import PostgresOptions, parse_url
from conveyor.store.postgres.queries import Q
from conveyor.store.postgres.writer import Job, SetwiseRoundWriter

log = logging.getLogger("conveyor.store.postgres")

T = TypeVar("T")
WRITER_LANES = 2  # group-commit rounds in flight at once, each on a connection of its own
HOUSEKEEPING_EVERY = 1.0  # seconds (of the callers' clock) between dedup/result sweeps


class PostgresStore:
    def __init__(self, url: str) -> None:
        self.options: PostgresOptions = parse_url(url)
        self.capabilities = StoreCapabilities("postgres", shared=True, persistent=True)
        self._wake: Callable[[str], None] | None = None
        self._pool: driver.Pool | None = None
        self._writer: SetwiseRoundWriter | None = None
        self._listener: NotificationListener | None = None
        self._notifier: Notifier | None = None
        self._node: NodeState | None = None
        self._writer_conns: dict[int, driver.Connection] = {}
        self._last_housekeeping = float("-inf")
        self._maintenance: asyncio.Task[None] | None = None
        self._last_vacuum = time.monotonic()
        self._vacuums = 0

    @property
    def node(self) -> NodeState:
        if self._node is None:
            raise BrokerClosed("the store is closed")
        return self._node

    def set_waker(self, wake: Callable[[str], None]) -> None:
        self._wake = wake

    def metrics(self) -> dict[str, float]:
        w, listener, pool = self._writer, self._listener, self._pool
        if w is None or listener is None or pool is None:
            return {}
        return {
            **w.meter.metrics(),
            "commit_retries_total": w.retries,
            "notifications_received_total": listener.received,
            "notifications_sent_total": self._notifier.sent if self._notifier else 0,
            "listener_reconnects_total": listener.reconnects,
            "vacuums_total": self._vacuums,
            "pool_connections": pool.get_size(),
            "pool_connections_idle": pool.get_idle_size(),
        }

    # -- life cycle -------------------------------------------------------

    async def open(self) -> None:
        """Migrate (or check) the schema, start a new epoch, connect."""
        if self._pool is not None:
            return
        options = self.options
        conn = await driver.connect(options)
        try:
            if options.migrate:
                await migrate.migrate(conn, options.schema)
            else:
                await migrate.check(conn, options.schema)
            epoch = int(await conn.fetchval(Q.epoch_next))
        except Exception as exc:
            failure = driver.translate(exc)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            await conn.close()
        node = NodeState(secrets.token_hex(6), epoch, channel_for(options.schema))
        pool = await driver.create_pool(options)
        listener = NotificationListener(
            options, node.channel, node.node, self._notified, self._wake_all
        )
        try:
            await listener.start()
        except BaseException:
            await pool.close()
            raise
        notifier = Notifier(pool.acquire, node.channel, node.node)
        notifier.start()
        writer = SetwiseRoundWriter(self._writer_connection, self._round, lanes=WRITER_LANES)
        writer.start()
        self._node, self._pool, self._listener, self._writer = node, pool, listener, writer
        self._notifier = notifier
        log.info(
            "PostgreSQL store open: %s schema %s, node %s, epoch %d",
            options.redacted,
            options.schema,
            node.node,
            epoch,
        )

    async def close(self) -> None:
        maintenance, self._maintenance = self._maintenance, None
        if maintenance is not None:
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConveyorError):
                await maintenance
        writer, listener, pool = self._writer, self._listener, self._pool
        notifier, self._notifier = self._notifier, None
        self._writer = self._listener = self._pool = None
        if writer is not None:
            await writer.stop()
        if notifier is not None:
            await notifier.stop()
        if listener is not None:
            await listener.stop()
        conns, self._writer_conns = list(self._writer_conns.values()), {}
        for conn in conns:
            if conn.is_closed():
                continue
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:  # closing anyway
                conn.terminate()
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except Exception:  # connections still busy: cut them
                pool.terminate()
        self._node = None

    @contextlib.asynccontextmanager
    async def _writer_connection(self, lane: int) -> AsyncIterator[driver.Connection]:
        """A writer lane's own connection (made again if it broke): rounds
        never wait behind claims for a pooled one."""
        conn = self._writer_conns.get(lane)
        if conn is None or conn.is_closed():
            conn = self._writer_conns[lane] = await driver.connect(self.options)
        try:
            yield conn
        except BaseException as exc:
            if driver.is_connection_error(exc) or isinstance(exc, asyncio.CancelledError):
                # Cut in the middle of an operation, it may never be usable
                # again ("another operation is in progress"): the next round
                # connects afresh.
                if self._writer_conns.get(lane) is conn:
                    del self._writer_conns[lane]
                conn.terminate()
            raise

    def _announce(self, queues: set[str]) -> None:
        """Tell the other nodes, now that it is committed."""
        if self._notifier is not None:
            self._notifier.announce(queues)

    def _notified(self, queue: str) -> None:
        if self._wake is not None:
            self._wake(queue)

    async def _wake_all(self) -> None:
        """After notifications may have been missed: every queue looks again."""
        for config in await self.list_queues():
            self._notified(config.name)

    async def _pooled(self, fn: Callable[[driver.Connection], Awaitable[T]]) -> T:
        """Run ``fn`` on a pooled connection; again after a deadlock; driver
        errors become StoreError."""
        if self._pool is None:
            raise BrokerClosed("the store is closed")
        pool = self._pool
        for attempt in range(1, driver.TRANSIENT_RUNS + 1):
            try:
                async with pool.acquire() as conn:
                    return await fn(conn)
            except ConveyorError:
                raise
            except Exception as exc:
                if driver.is_transient(exc) and attempt < driver.TRANSIENT_RUNS:
                    await asyncio.sleep(driver.TRANSIENT_BACKOFF.backoff(attempt))
                    continue
                failure = driver.translate(exc)
                if failure is exc:
                    raise
                raise failure from exc
        raise AssertionError("unreachable")

    async def _round(self, conn: driver.Connection, jobs: list[Job]) -> None:
        """One group-commit round: the writer's jobs, in one transaction."""
        node = self.node
        enqueues = [j for j in jobs if j.kind == "enqueue"]
        first_id = await allocate_ids(conn, enqueues) if enqueues else 0
        fx = CountDeltas()
        async with conn.transaction():
            if enqueues:
                await enqueue_round(conn, node, enqueues, first_id, fx)
            for kind, settle in (
                ("ack", messages.ack_round),
                ("nack", messages.nack_round),
                ("dead", messages.dead_round),
                ("extend", messages.extend_round),
            ):
                mine = [j for j in jobs if j.kind == kind]
                if mine:
                    await settle(conn, node, mine, fx)
            await fx.flush(conn)
        self._announce(fx.changed)

    async def _submit(self, kind: str, op: Any) -> Any:
        if self._writer is None:
            raise BrokerClosed("the store is closed")
        return await self._writer.submit(kind, op)

    # -- queues -----------------------------------------------------------

    async def create_queue(self, config: QueueConfig) -> QueueConfig | None:
        async def create(conn: driver.Connection) -> QueueConfig | None:
            async with conn.transaction():
                name = await conn.fetchval(
                    Q.queue_insert, config.name, mapping.settings_text(config), config.created_at
                )
                if name is None:
                    return None
                await conn.execute(Q.owners_fill, config.name, config.buckets)
            return config

        return await self._pooled(create)

    async def update_queue(self, config: QueueConfig) -> None:
        async def update(conn: driver.Connection) -> None:
            async with conn.transaction():
                old = await conn.fetchval(Q.queue_lock_one, config.name)
                if old is None:
                    raise QueueNotFound(f"no queue named {config.name!r}")
                await conn.execute(Q.queue_update, config.name, mapping.settings_text(config))
                await conn.execute(Q.owners_fill, config.name, config.buckets)
                if self.node.settings(config.name, old).buckets != config.buckets:
                    await queues.rebucket(conn, config)

        await self._pooled(update)
        self._announce({config.name})

    async def delete_queue(self, name: str) -> None:
        async def delete(conn: driver.Connection) -> None:
            async with conn.transaction():
                if await conn.fetchval(Q.queue_delete, name) is None:
                    raise QueueNotFound(f"no queue named {name!r}")
                for query in (
                    Q.messages_drop_queue,
                    Q.dedup_drop_queue,
                    Q.consumers_drop_queue,
                    Q.owners_drop_queue,
                    Q.bindings_drop_queue,
                    Q.counts_drop_queue,
                ):
                    await conn.execute(query, name)

        await self._pooled(delete)
        self._announce({name})

    async def get_queue(self, name: str) -> QueueConfig:
        row = await self._pooled(lambda conn: conn.fetchrow(Q.queue_get, name))
        if row is None:
            raise QueueNotFound(f"no queue named {name!r}")
        return mapping.queue_config(*row)

    async def list_queues(self) -> list[QueueConfig]:
        rows = await self._pooled(lambda conn: conn.fetch(Q.queues_all))
        return [mapping.queue_config(*row) for row in rows]

    async def purge_queue(self, name: str) -> int:
        async def purge(conn: driver.Connection) -> int:
            async with conn.transaction():
                await queues.existing(conn, name)
                rows = await conn.fetch(Q.purge, name)
                # A member committed behind a purged head by a concurrent
                # enqueue leads now. (-inf: it becomes ready when it is due.)
                heads = [(name, g, float("-inf")) for g, st in rows if g and is_group_head(st)]
                await messages.promote_groups(conn, heads)
                fx = CountDeltas()
                fx.depth(name, -len(rows))
                await fx.flush(conn)
            return len(rows)

        return await self._pooled(purge)

    # -- messages ---------------------------------------------------------

    async def enqueue(self, op: EnqueueOp) -> list[list[EnqueueResult]]:
        result: list[list[EnqueueResult]] = await self._submit("enqueue", op)
        return result

    async def claim(self, op: ClaimOp) -> ClaimResult:
        node = self.node
        return await self._pooled(lambda conn: messages.claim(conn, node, op))

    async def ack(self, op: SettleOp) -> Settled:
        result: Settled = await self._submit("ack", op)
        return result

    async def nack(self, op: SettleOp) -> Settled:
        result: Settled = await self._submit("nack", op)
        return result

    async def extend(self, op: SettleOp) -> Settled:
        result: Settled = await self._submit("extend", op)
        return result

    async def dead(self, op: SettleOp) -> Settled:
        result: Settled = await self._submit("dead", op)
        return result

    # -- sessions ---------------------------------------------------------

    async def open_session(self, op: OpenSessionOp) -> None:
        await self._pooled(
            lambda conn: conn.execute(
                Q.session_insert, op.id, messages.scrub(op.name), op.capacity, op.timeout, op.now
            )
        )

    async def touch_session(self, session: str, now: float) -> bool:
        found = await self._pooled(lambda conn: conn.fetchval(Q.session_touch, session, now))
        return found is not None

    async def subscribe(self, session: str, queue: str, now: float) -> None:
        async def subscribe(conn: driver.Connection) -> None:
            async with conn.transaction():
                await queues.existing(conn, queue)
                await conn.execute(Q.consumer_insert, session, queue, now)

        await self._pooled(subscribe)
        self._announce({queue})  # other nodes' consumers of the queue: the buckets move

    async def close_session(self, session: str, now: float) -> list[str]:
        node = self.node

        async def close(conn: driver.Connection) -> list[str]:
            fx = CountDeltas()
            async with conn.transaction():
                await messages.close_sessions(conn, node, fx, [session], now)
                await fx.flush(conn)
            return sorted(fx.woken)

        woken = await self._pooled(close)
        self._announce(set(woken))
        return woken

    async def consumers(self, queue: str, since: float) -> dict[str, int]:
        rows = await self._pooled(lambda conn: conn.fetch(Q.consumers_of_queue, queue, since))
        return {session: capacity for session, capacity in rows}

    async def sessions(self) -> list[SessionInfo]:
        async def sessions(conn: driver.Connection) -> list[SessionInfo]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                leases = await conn.fetch(Q.leases_by_holder)
                consumers = await conn.fetch(Q.consumers_all)
                rows = await conn.fetch(Q.sessions_all)
            return mapping.sessions(rows, leases, consumers)

        return await self._pooled(sessions)

    async def sweep(self, now: float) -> Swept:
        node = self.node
        housekeeping = (
            now - self._last_housekeeping >= HOUSEKEEPING_EVERY or now < self._last_housekeeping
        )
        swept = await self._pooled(lambda conn: messages.sweep(conn, node, now, housekeeping))
        if housekeeping:
            self._last_housekeeping = now
        self._announce(set(swept.woken))
        self._maybe_vacuum()
        return swept

    def _maybe_vacuum(self) -> None:
        """Start a VACUUM of the churning tables now and then (by the wall
        clock: this is upkeep, not semantics), unless one is running."""
        every = self.options.vacuum_every
        if every <= 0 or (self._maintenance is not None and not self._maintenance.done()):
            return
        if time.monotonic() - self._last_vacuum < every:
            return
        self._last_vacuum = time.monotonic()
        self._maintenance = asyncio.get_running_loop().create_task(
            self._vacuum(), name="conveyor-postgres-vacuum"
        )

    async def _vacuum(self) -> None:
        """One node at a time (an advisory lock of the schema); the others
        skip their turn. Every sixth run also refreshes the planner's statistics."""
        key = f"{self.options.schema}.vacuum"

        async def vacuum(conn: driver.Connection) -> None:
            if not await conn.fetchval(Q.maintenance_lock, migrate.LOCK_CLASS, key):
                return
            try:
                analyze = self._vacuums % 6 == 0
                await conn.execute(Q.vacuum_analyze if analyze else Q.vacuum)
                self._vacuums += 1
            finally:
                try:
                    await conn.execute(Q.maintenance_unlock, migrate.LOCK_CLASS, key)
                except BaseException:
                    conn.terminate()  # the lock must not outlive this turn in the pool
                    raise

        try:
            await self._pooled(vacuum)
        except ConveyorError as exc:
            log.warning("VACUUM of the store's tables failed: %s", exc.message)

    # -- dead letters -----------------------------------------------------

    async def dead_letters(
        self, queue: str, limit: int, after: str | None, max_bytes: int = DEFAULT_MAX_REPLY_BYTES
    ) -> list[Message]:
        async def page(conn: driver.Connection) -> list[Message]:
            config = await queues.existing(conn, queue)
            start = parse_id(after) if after is not None else -1
            rows = await conn.fetch(Q.dead_page, queue, start, limit, MESSAGE_OVERHEAD, max_bytes)
            return [mapping.dead_letter(queue, config, row) for row in rows]

        return await self._pooled(page)

    async def redrive(self, queue: str, ids: list[str] | None, now: float) -> int:
        async def redrive(conn: driver.Connection) -> int:
            async with conn.transaction():
                await queues.existing(conn, queue)
                wanted = None if ids is None else sorted({parse_id(i) for i in ids})
                rows = await conn.fetch(Q.dead_lock, queue, wanted)
                for seq, grp in rows:
                    await queues.redrive_one(conn, queue, seq, grp, now)
                await conn.execute(Q.results_delete, [seq for seq, _ in rows])
                fx = CountDeltas()
                if rows:
                    fx.depth(queue, len(rows))
                await fx.flush(conn)
            return len(rows)

        count = await self._pooled(redrive)
        if count:
            self._announce({queue})
        return count

    # -- topics -----------------------------------------------------------

    async def bind(self, binding: Binding) -> None:
        async def bind(conn: driver.Connection) -> None:
            async with conn.transaction():
                await queues.existing(conn, binding.queue)
                await conn.execute(Q.binding_insert, binding.pattern, binding.queue)

        await self._pooled(bind)

    async def unbind(self, binding: Binding) -> bool:
        found = await self._pooled(
            lambda conn: conn.fetchval(Q.binding_delete, binding.pattern, binding.queue)
        )
        return found is not None

    async def bindings(self) -> list[Binding]:
        rows = await self._pooled(lambda conn: conn.fetch(Q.bindings_all))
        return [Binding(pattern, queue) for pattern, queue in rows]

    # -- results and statistics -------------------------------------------

    async def get_result(self, message_id: str) -> Result | None:
        seq = parse_id(message_id)
        row = await self._pooled(lambda conn: conn.fetchrow(Q.result_get, seq))
        return None if row is None else mapping.result(message_id, row)

    async def stats(self, queue: str, now: float) -> QueueStats:
        async def stats(conn: driver.Connection) -> QueueStats:
            await queues.existing(conn, queue)
            row = await conn.fetchrow(Q.stats, queue)
            assert row is not None
            *counts, consumers, oldest = row
            return mapping.queue_stats(queue, counts, consumers, oldest, now)

        return await self._pooled(stats)
