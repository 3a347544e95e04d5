"""Cross-node wake-ups: LISTEN on the store's channel.

Every transaction that makes messages claimable (an enqueue, a nack, a
group moving on, a sweep, a redrive) is announced, once committed, with
``pg_notify(channel, "node queue")`` (the Notifier, below). Each node keeps
one connection that LISTENs, ignores its own notifications (its broker wakes
its own consumers directly) and reports the others' queues.

Notifications are a hint, never the only way: a waiting consumer also looks
again at least once a second (the broker's receive loop), so a lost
notification, or a listening connection that broke, delays a delivery by at
most that second. A broken connection is replaced (with backoff), and after
a reconnect every queue is reported once, for what was missed meanwhile.
The loss is logged once as a WARNING (no traceback: it is an outage, not a
bug) and the recovery as INFO; the attempts in between at DEBUG.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable

from conveyor.core.errors import ConveyorError
from conveyor.core.retry import RetryPolicy
from conveyor.store.postgres import driver
from conveyor.store.postgres.options import PostgresOptions
from conveyor.store.postgres.queries import Q

log = logging.getLogger("conveyor.store.postgres")

PING_EVERY = 5.0  # seconds between checks that the listening connection lives
RELISTEN = RetryPolicy(base=0.1, cap=5.0, jitter=0.0)  # waits between tries to LISTEN again


def channel_for(schema: str) -> str:
    """The NOTIFY channel of a schema (a channel name is at most 63 bytes)."""
    name = f"conveyor_{schema}"
    if len(name) <= 63:
        return name
    return "conveyor_" + hashlib.sha1(schema.encode()).hexdigest()[:20]


class NotificationListener:
    def __init__(
        self,
        options: PostgresOptions,
        channel: str,
        node: str,
        on_change: Callable[[str], None],
        on_reconnect: Callable[[], Awaitable[None]],
    ) -> None:
        self._options = options
        self._channel = channel
        self._node = node
        self._on_change = on_change
        self._on_reconnect = on_reconnect
        self._conn: driver.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.received = 0  # notifications from other nodes
        self.reconnects = 0

    async def start(self) -> None:
        self._conn = await self._listen()
        self._task = asyncio.get_running_loop().create_task(
            self._watch(), name="conveyor-postgres-listener"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:  # closing anyway
                conn.terminate()

    async def _listen(self) -> driver.Connection:
        conn = await driver.connect(self._options)
        try:
            await conn.add_listener(self._channel, self._notified)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._terminated)
        self._lost.clear()
        return conn

    def _terminated(self, conn: object) -> None:
        if conn is self._conn:  # not one that was replaced or closed on purpose
            self._lost.set()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        node, _, queue = payload.partition(" ")
        if node == self._node or not queue:
            return
        self.received += 1
        self._on_change(queue)

    async def _watch(self) -> None:
        """Check the listening connection; when it is lost, say so once
        (WARNING), listen again, and say so (INFO)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), PING_EVERY)
            reason = await self._lost_because()
            if reason is None:
                continue
            log.warning("the LISTEN connection was lost (%s); listening again", reason)
            await self._listen_again()
            self.reconnects += 1
            log.info("listening for other nodes' changes again")
            await self._wake_all()

    async def _lost_because(self) -> str | None:
        """None while the listening connection lives, else what happened to it."""
        conn = self._conn
        if conn is None or conn.is_closed() or self._lost.is_set():
            return "the server closed it"
        try:
            await asyncio.wait_for(conn.fetchval("SELECT 1"), PING_EVERY)
        except Exception as exc:
            return f"it stopped answering: {type(exc).__name__}: {exc}"
        return None

    async def _listen_again(self) -> None:
        """A new listening connection, retried with backoff for as long as
        it takes (each failure at DEBUG: the WARNING said it once)."""
        failures = 0
        while True:
            if self._conn is not None:
                self._conn.terminate()
            self._conn = None
            try:
                self._conn = await self._listen()
                return
            except Exception as exc:
                failures += 1
                delay = RELISTEN.backoff(failures)
                log.debug("cannot LISTEN yet (%s); trying again in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _wake_all(self) -> None:
        """Every queue looks again, for what was missed meanwhile."""
        try:
            await self._on_reconnect()
        except ConveyorError as exc:
            # The pool may still be reconnecting too: waiting consumers look
            # again within a second anyway.
            log.debug("waking every queue after listening again: %s", exc)
        except Exception:
            log.exception("waking every queue after listening again failed")


class Notifier:
    """Sends this node's notifications, after the commits they announce.

    Queues to announce gather while the previous batch is being sent; each
    batch is one statement on a pooled connection, in a transaction of its
    own committed without waiting for the WAL flush (a NOTIFY holds a lock
    that serialises every notifying commit of the server, so it is kept out
    of the transactions that carry data). A batch that fails is dropped:
    waiting consumers look again within a second anyway."""

    def __init__(self, acquire: driver.Acquire, channel: str, node: str) -> None:
        self._acquire = acquire
        self._channel = channel
        self._node = node
        self._pending: set[str] = set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="conveyor-postgres-notifier"
        )

    def announce(self, queues: set[str]) -> None:
        if queues:
            self._pending |= queues
            self._wakeup.set()

    async def stop(self) -> None:
        """Send what is pending, then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        if self._pending:
            await self._send()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._pending:
                await self._send()

    async def _send(self) -> None:
        queues, self._pending = sorted(self._pending), set()
        payloads = [f"{self._node} {q}" for q in queues]
        try:
            async with self._acquire() as conn:
                await conn.fetchval(Q.notify, self._channel, payloads)
            self.sent += len(payloads)
        except Exception as exc:
            log.debug("notifications for %s were not sent: %s", queues, exc)
