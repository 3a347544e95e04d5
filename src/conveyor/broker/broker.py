"""The Broker: the whole queue contract over one Store, for one asyncio loop.

It validates every argument before anything is written, turns delays and TTLs
into times with its clock, keeps long-polling consumers waiting and wakes them
when a queue changes, tracks which consumer sessions own which group buckets,
matches topics to bound queues, and runs the lease monitor.

Concurrency: all methods run on one event loop; the store serialises writes
(SQLite through its group-commit writer, which runs on that same loop;
PostgreSQL through transactions), so the broker holds no locks of its own. Its caches (queue
configs, bindings, bucket owners) are refreshed from the store on change and
age out, so several broker nodes on one shared store converge.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, Self, TypeVar, Unpack

import msgspec

from conveyor.broker import waiters
from conveyor.broker.buckets import BucketAssigner
from conveyor.broker.claims import ShortClaims
from conveyor.broker.config import BrokerConfig
from conveyor.broker.monitor import LeaseMonitor
from conveyor.broker.producing import prepare
from conveyor.broker.replies import MAX_REASON, ReplyBudget, ReplySizes
from conveyor.broker.waiters import ResultWaiters, Waiters
from conveyor.core import validation
from conveyor.core.errors import (
    BodyTooLarge,
    BrokerClosed,
    ConveyorError,
    InvalidArgument,
    QueueExists,
    ResultTimeout,
    SessionNotFound,
)
from conveyor.core.ids import parse_id
from conveyor.core.topics import topic_matches, validate_pattern, validate_topic
from conveyor.core.types import (
    Ack,
    Binding,
    Dead,
    Delivery,
    EnqueueResult,
    Extend,
    Message,
    MessageOptions,
    Nack,
    NewMessage,
    PreparedMessage,
    QueueConfig,
    QueueStats,
    Result,
    SessionInfo,
)
from conveyor.store.base import (
    ClaimOp,
    EnqueueOp,
    OpenSessionOp,
    Settled,
    SettleOp,
    Store,
    Swept,
)

_Item = TypeVar("_Item", Ack, Nack, Extend, Dead)


class Broker:
    def __init__(
        self,
        store: Store,
        config: BrokerConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monitor: bool = True,
    ) -> None:
        self.store = store
        self.config = config or BrokerConfig()
        self.reply_sizes = ReplySizes.of(self.config.max_body)
        self._clock = clock
        self._waiters = Waiters()
        self._buckets = BucketAssigner(self._recent_consumers, max_age=self.config.config_max_age)
        self._monitor = LeaseMonitor(self.sweep_once, self.config.monitor_interval)
        self._run_monitor = monitor
        self._queues: dict[str, tuple[float, QueueConfig]] = {}
        self._bindings: tuple[float, list[Binding]] | None = None
        self._subscribed: set[tuple[str, str]] = set()
        self._touched: dict[str, float] = {}
        self._short_claims = ShortClaims(
            self._waiters, self.config.recheck_interval, shared=store.capabilities.shared
        )
        self._result_waiters = ResultWaiters()
        self._open = False

    # -- life cycle -------------------------------------------------------

    async def start(self) -> Self:
        self.store.set_waker(self._wake_from_store)
        await self.store.open()
        self._open = True
        if self._run_monitor:
            self._monitor.start()
        return self

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        await self._monitor.stop()
        self._waiters.notify_all()
        await self.store.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _recent_consumers(self, queue: str) -> dict[str, int]:
        return await self.store.consumers(queue, self._clock() - self.config.consumer_idle)

    def _wake_from_store(self, queue: str) -> None:
        """Another node changed ``queue``: its waiting consumers look again."""
        self._buckets.invalidate(queue)
        self._waiters.notify(queue)

    def _now(self) -> float:
        if not self._open:
            raise BrokerClosed("the broker is closed")
        return self._clock()

    # -- queues -----------------------------------------------------------

    async def create_queue(
        self, name: str, /, *, exist_ok: bool = True, **settings: Any
    ) -> QueueConfig:
        """Create a queue. With ``exist_ok`` an existing queue of the same
        settings is returned; different settings raise QueueExists. (``name``
        is positional: a setting called ``name`` is an unknown setting.)"""
        now = self._now()
        config = validation.queue_config(name, settings)
        config = msgspec.structs.replace(config, created_at=now)
        created = await self.store.create_queue(config)
        if created is not None:
            self._queues[name] = (time.monotonic(), created)
            return created
        existing = await self.store.get_queue(name)
        requested = validation.queue_config(name, settings, base=None)
        same = all(getattr(existing, k) == getattr(requested, k) for k in settings)
        if not exist_ok or not same:
            raise QueueExists(
                f"queue {name!r} exists"
                + ("" if same else " with other settings; use configure_queue to change them")
            )
        return existing

    async def configure_queue(self, name: str, /, **settings: Any) -> QueueConfig:
        self._now()
        base = await self.store.get_queue(validation.queue_name(name))
        config = validation.queue_config(name, settings, base=base)
        await self.store.update_queue(config)
        self._queues[name] = (time.monotonic(), config)
        self._buckets.invalidate(name)
        return config

    async def delete_queue(self, name: str) -> None:
        self._now()
        await self.store.delete_queue(validation.queue_name(name))
        self._queues.pop(name, None)
        self._bindings = None
        # Its consumers went with it: a session receiving from a queue of the
        # same name created later must register as its consumer again.
        self._subscribed = {k for k in self._subscribed if k[1] != name}
        self._buckets.invalidate(name)
        self._waiters.notify(name)

    async def get_queue(self, name: str) -> QueueConfig:
        self._now()
        return await self._queue(validation.queue_name(name))

    async def queues(self) -> list[QueueConfig]:
        self._now()
        return await self.store.list_queues()

    async def purge(self, name: str) -> int:
        self._now()
        return await self.store.purge_queue(validation.queue_name(name))

    async def _queue(self, name: str) -> QueueConfig:
        cached = self._queues.get(name)
        if cached is not None and time.monotonic() - cached[0] < self.config.config_max_age:
            return cached[1]
        config = await self.store.get_queue(name)
        self._queues[name] = (time.monotonic(), config)
        return config

    # -- producing --------------------------------------------------------

    async def enqueue(
        self, queue: str, body: bytes, **options: Unpack[MessageOptions]
    ) -> EnqueueResult:
        """Enqueue one message (the keyword form of ``enqueue_many``)."""
        return (await self.enqueue_many(queue, [NewMessage(body=body, **options)]))[0]

    async def enqueue_many(
        self, queue: str, messages: Sequence[NewMessage], *, idempotency_key: str | None = None
    ) -> list[EnqueueResult]:
        """Enqueue a batch: all of it is stored, or none of it. The same
        ``idempotency_key`` again within the window returns the first reply
        and stores nothing (a producer retrying after a lost connection)."""
        now = self._now()
        config = await self._queue(validation.queue_name(queue))
        prepared = prepare(config, messages, now, self.config)
        op = self._enqueue_op([(queue, prepared)], now, idempotency_key)
        results = await self.store.enqueue(op)
        self._wake_for(queue, prepared)
        return results[0]

    async def publish(
        self,
        topic: str,
        body: bytes,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[MessageOptions],
    ) -> dict[str, EnqueueResult]:
        """Publish one message (the keyword form of ``publish_message``)."""
        message = NewMessage(body=body, **options)
        return await self.publish_message(topic, message, idempotency_key=idempotency_key)

    async def publish_message(
        self, topic: str, message: NewMessage, *, idempotency_key: str | None = None
    ) -> dict[str, EnqueueResult]:
        """One copy into every queue bound to the topic, atomically; the
        result per queue. No bound queue: nothing is stored, {} is returned."""
        now = self._now()
        validate_topic(topic)
        queues = sorted(
            {b.queue for b in await self._current_bindings() if topic_matches(b.pattern, topic)}
        )
        if not queues:
            validation.message(message, self.config.max_body)
            return {}
        batches = []
        for queue in queues:
            config = await self._queue(queue)
            batches.append((queue, prepare(config, [message], now, self.config)))
        results = await self.store.enqueue(self._enqueue_op(batches, now, idempotency_key))
        for queue, prepared in batches:
            self._wake_for(queue, prepared)
        return {queue: result[0] for (queue, _), result in zip(batches, results, strict=True)}

    def _enqueue_op(
        self, batches: list[tuple[str, list[PreparedMessage]]], now: float, key: str | None
    ) -> EnqueueOp:
        if key is None:
            return EnqueueOp(batches, now)
        validation.key("idempotency_key", key)
        return EnqueueOp(batches, now, key, now + self.config.idempotency_window)

    def _wake_for(self, queue: str, prepared: list[PreparedMessage]) -> None:
        if any(p.group is not None for p in prepared):
            self._waiters.notify(queue)
        else:
            self._waiters.notify(queue, len(prepared))

    # -- topics -----------------------------------------------------------

    async def bind(self, pattern: str, queue: str) -> None:
        self._now()
        validate_pattern(pattern)
        await self._queue(validation.queue_name(queue))
        await self.store.bind(Binding(pattern, queue))
        self._bindings = None

    async def unbind(self, pattern: str, queue: str) -> bool:
        self._now()
        validate_pattern(pattern)
        validation.queue_name(queue)
        removed = await self.store.unbind(Binding(pattern, queue))
        self._bindings = None
        return removed

    async def bindings(self) -> list[Binding]:
        self._now()
        return list(await self._current_bindings())

    async def _current_bindings(self) -> list[Binding]:
        cached = self._bindings
        if cached is not None and time.monotonic() - cached[0] < self.config.config_max_age:
            return cached[1]
        bindings = await self.store.bindings()
        self._bindings = (time.monotonic(), bindings)
        return bindings

    # -- consumer sessions ------------------------------------------------

    async def open_session(
        self, name: str = "", *, capacity: int = 1, timeout: float | None = None
    ) -> str:
        """A consumer session: the unit that holds leases and owns buckets."""
        now = self._now()
        if not isinstance(name, str) or len(name) > 200:
            raise InvalidArgument("a session name is a string of at most 200 characters")
        validation.limit("capacity", capacity, maximum=1_000_000)
        timeout = (
            self.config.session_timeout
            if timeout is None
            else validation.seconds("timeout", timeout, positive=True)
        )
        session = secrets.token_hex(8)
        await self.store.open_session(OpenSessionOp(session, name, capacity, timeout, now))
        self._touched[session] = now
        return session

    async def heartbeat(self, session: str) -> None:
        """Keep the session alive; SessionNotFound once it has expired."""
        now = self._now()
        if not await self.store.touch_session(session, now):
            self._forget_session(session)
            raise SessionNotFound(f"session {session!r} is closed or expired")
        self._touched[session] = now

    async def close_session(self, session: str) -> None:
        """End the session; its leases are released at once."""
        now = self._now()
        woken = await self.store.close_session(session, now)
        self._forget_session(session)
        for queue in woken:
            self._buckets.invalidate(queue)
            self._waiters.notify(queue)

    def _forget_session(self, session: str) -> None:
        self._touched.pop(session, None)
        self._short_claims.forget(session)
        for key in [k for k in self._subscribed if k[0] == session]:
            self._subscribed.discard(key)
            self._buckets.invalidate(key[1])

    async def sessions(self) -> list[SessionInfo]:
        self._now()
        return await self.store.sessions()

    # -- consuming --------------------------------------------------------

    async def receive(
        self,
        session: str,
        queue: str,
        *,
        max: int = 1,
        wait: float = 0.0,
        visibility: float | None = None,
        budget: ReplyBudget | None = None,
    ) -> list[Delivery]:
        """Lease up to ``max`` messages, of at most ``max_reply_bytes`` (or
        what ``budget`` has room for; always at least one message); with
        ``wait``, long-poll that many seconds for the first one. Returns []
        when nothing came."""
        now = self._now()
        config = await self._queue(validation.queue_name(queue))
        limit = validation.limit("max", max, maximum=self.config.max_receive)
        wait = validation.seconds("wait", wait)
        if wait > self.config.max_wait:
            raise InvalidArgument(f"wait is at most {self.config.max_wait:g} seconds")
        lease = (
            config.visibility_timeout
            if visibility is None
            else validation.seconds("visibility", visibility, positive=True)
        )
        await self._keep_alive(session, queue, now)
        one = self.reply_sizes.delivery
        want = min(self.config.max_reply_bytes, limit * one)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait  # long-poll time is real time, whatever the clock
        while True:
            waiter = self._waiters.register(queue) if wait > 0 else None
            try:
                buckets = await self._buckets.buckets_of(queue, session, config.buckets)
                short = self._short_claims.still(session, queue, buckets, now)
                if short is None:
                    version = self._waiters.version(queue)
                    size = want if budget is None else await budget.reserve(want, one)
                    claimed = await self.store.claim(
                        ClaimOp(queue, session, limit, now, lease, buckets, size)
                    )
                    if budget is not None:
                        budget.keep(size, claimed.size)
                    # Short for want of bytes, not of messages, unless even
                    # the largest message would have fitted.
                    emptied = claimed.size + one <= size
                    self._short_claims.note(
                        session, queue, limit, claimed, emptied, version, buckets, now
                    )
                    if claimed.deliveries or waiter is None:
                        return claimed.deliveries
                    next_at = claimed.next_at
                elif waiter is None:
                    return []
                else:
                    next_at = short.next_at
                now = self._now()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return []
                # Wake for a change, for the next delayed message, or after
                # the re-check interval (a bucket that frees up on another node).
                pause = min(remaining, self.config.recheck_interval)
                if next_at is not None:
                    pause = min(pause, max_(next_at - now, 0.0))
                await waiters.wait(waiter, pause)
            finally:
                if waiter is not None:
                    self._waiters.unregister(queue, waiter)
            now = self._now()
            await self._keep_alive(session, queue, now)

    async def _keep_alive(self, session: str, queue: str, now: float) -> None:
        """A receiving session is alive: record it now and then, and register
        it as a consumer of the queue the first time."""
        last = self._touched.get(session)
        if last is None or now - last > 1.0:
            await self.heartbeat(session)
        if (session, queue) not in self._subscribed:
            await self.store.subscribe(session, queue, now)
            self._subscribed.add((session, queue))
            self._buckets.invalidate(queue)

    async def ack(self, id: str, token: int, result: bytes | None = None) -> None:
        _raise_first(await self.ack_many([Ack(id, token, result)]))

    async def nack(
        self, id: str, token: int, *, delay: float | None = None, error: str | None = None
    ) -> None:
        _raise_first(await self.nack_many([Nack(id, token, delay, error)]))

    async def extend(self, id: str, token: int, seconds: float) -> float:
        """Push the lease deadline to now + seconds; the new deadline."""
        outcome = (await self.extend_many([Extend(id, token, seconds)]))[0]
        if isinstance(outcome, ConveyorError):
            raise outcome
        assert outcome is not None
        return outcome

    async def dead(self, id: str, token: int, reason: str) -> None:
        _raise_first(await self.dead_many([Dead(id, token, reason)]))

    async def ack_many(self, items: Sequence[Ack]) -> list[ConveyorError | None]:
        for item in self._check_items(items, Ack):
            if item.result is not None and not isinstance(item.result, bytes):
                raise InvalidArgument("an ack's result must be bytes")
            if item.result is not None and len(item.result) > self.config.max_body:
                raise BodyTooLarge(f"a result is at most {self.config.max_body} bytes")
        settled = await self.store.ack(SettleOp(list(items), self._now()))
        self._after_settle(settled, [i.id for i in items if i.result is not None])
        return _errors(settled)

    async def nack_many(self, items: Sequence[Nack]) -> list[ConveyorError | None]:
        for item in self._check_items(items, Nack):
            if item.delay is not None:
                validation.seconds("delay", item.delay)
            if item.error is not None and not isinstance(item.error, str):
                raise InvalidArgument("a nack's error must be a string")
            if item.error is not None and len(item.error) > MAX_REASON:
                raise InvalidArgument(f"a nack's error is at most {MAX_REASON} characters")
            if not isinstance(item.undelivered, bool):
                raise InvalidArgument("a nack's undelivered is true or false")
        settled = await self.store.nack(SettleOp(list(items), self._now()))
        self._after_settle(settled, [i.id for i in items])
        return _errors(settled)

    async def extend_many(self, items: Sequence[Extend]) -> list[float | ConveyorError]:
        for item in self._check_items(items, Extend):
            validation.seconds("seconds", item.seconds, positive=True)
        settled = await self.store.extend(SettleOp(list(items), self._now()))
        return [o if o is not None else InvalidArgument("no deadline") for o in settled.outcomes]

    async def dead_many(self, items: Sequence[Dead]) -> list[ConveyorError | None]:
        for item in self._check_items(items, Dead):
            if not isinstance(item.reason, str) or not item.reason:
                raise InvalidArgument("dead needs a reason")
            if len(item.reason) > MAX_REASON:
                raise InvalidArgument(f"a reason is at most {MAX_REASON} characters")
        settled = await self.store.dead(SettleOp(list(items), self._now()))
        self._after_settle(settled, [i.id for i in items])
        return _errors(settled)

    def _check_items(self, items: Sequence[_Item], kind: type[_Item]) -> Sequence[_Item]:
        self._now()
        if not items:
            raise InvalidArgument("a batch needs at least one item")
        if len(items) > self.config.max_batch:
            raise InvalidArgument(f"a batch holds at most {self.config.max_batch} items")
        for item in items:
            if not isinstance(item, kind):
                raise InvalidArgument(f"items must be {kind.__name__}, not {type(item).__name__}")
            parse_id(item.id)
            token = item.token
            if isinstance(token, bool) or not isinstance(token, int) or not 0 < token < 2**63:
                raise InvalidArgument(f"bad fencing token {validation.short_repr(token)}")
        return items

    def _after_settle(self, settled: Settled, finished: list[str]) -> None:
        for queue in settled.woken:
            self._waiters.notify(queue)
        for message_id in finished:
            self._result_waiters.wake(message_id)

    # -- dead letters -----------------------------------------------------

    async def dead_letters(
        self,
        queue: str,
        *,
        limit: int = 100,
        after: str | None = None,
        budget: ReplyBudget | None = None,
    ) -> list[Message]:
        """Up to ``limit`` dead letters after ``after``, oldest first, of at
        most ``max_reply_bytes`` (or what ``budget`` has room for): a page
        may hold fewer; the next starts after its last id."""
        self._now()
        await self._queue(validation.queue_name(queue))
        validation.limit("limit", limit, maximum=10_000)
        if after is not None:
            parse_id(after)
        one = self.reply_sizes.dead_letter
        size = min(self.config.max_reply_bytes, limit * one)
        if budget is not None:
            size = await budget.reserve(size, one)
        return await self.store.dead_letters(queue, limit, after, size)

    async def redrive(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Make dead letters ready again (all of them, or those ids); how many."""
        now = self._now()
        await self._queue(validation.queue_name(queue))
        if ids is not None:
            for message_id in ids:
                parse_id(message_id)
        count = await self.store.redrive(queue, None if ids is None else list(ids), now)
        if count:
            self._waiters.notify(queue)
        return count

    # -- results ----------------------------------------------------------

    async def result(
        self, message_id: str, *, timeout: float = 0.0, budget: ReplyBudget | None = None
    ) -> Result:
        """The result of a finished message, waiting up to ``timeout`` seconds."""
        self._now()
        parse_id(message_id)
        timeout = validation.seconds("timeout", timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        one = self.reply_sizes.result
        while True:
            size = 0 if budget is None else await budget.reserve(one, one)
            found = await self.store.get_result(message_id)
            if found is not None:
                return found
            if budget is not None:
                budget.keep(size, 0)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ResultTimeout(f"no result for message {message_id} within {timeout:g}s")
            # Woken by a settle on this broker; polled for other nodes.
            await self._result_waiters.wait(message_id, min(remaining, 0.5))

    # -- statistics and the monitor ----------------------------------------

    async def stats(self, queue: str) -> QueueStats:
        now = self._now()
        return await self.store.stats(validation.queue_name(queue), now)

    async def sweep_once(self) -> Swept:
        """One lease-monitor pass, now (the monitor calls it on its own)."""
        swept = await self.store.sweep(self._now())
        self._on_swept(swept)
        return swept

    def _on_swept(self, swept: Swept) -> None:
        for session in swept.sessions_expired:
            self._forget_session(session)
        for queue in swept.woken:
            self._buckets.invalidate(queue)
            self._waiters.notify(queue)
        for message_id in swept.finished:
            self._result_waiters.wake(message_id)


def max_(a: float, b: float) -> float:
    return a if a > b else b


def _errors(settled: Settled) -> list[ConveyorError | None]:
    return [o if isinstance(o, ConveyorError) else None for o in settled.outcomes]


def _raise_first(outcomes: list[ConveyorError | None]) -> None:
    for outcome in outcomes:
        if outcome is not None:
            raise outcome
