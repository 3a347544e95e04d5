"""AsyncClient: the Python SDK, asynchronous. The source of truth: the sync
``Client`` (conveyor.client.sync) is generated from this file by
``scripts/gen_sync.py``, and a test fails when the two drift apart.

Bodies: ``bytes`` go as they are, ``str`` as UTF-8, anything else as JSON
(with header ``content-type: application/json``). ``Delivery.json()`` and
``Delivery.text()`` read them back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Self, TypeVar

import msgspec

from conveyor.client.transport import Transport
from conveyor.client.urls import open_transport, resolve
from conveyor.core import types
from conveyor.core.errors import ConveyorError, InvalidArgument, error_for_code
from conveyor.core.tasks import TaskSet
from conveyor.core.types import (
    Binding,
    EnqueueResult,
    Message,
    NewMessage,
    QueueConfig,
    QueueStats,
    Result,
    SessionInfo,
)

T = TypeVar("T")
JSON_TYPE = "application/json"


def encode_body(
    body: object, headers: Mapping[str, str] | None
) -> tuple[bytes, dict[str, str] | None]:
    """A body as bytes, and the headers that say how to read it."""
    if isinstance(body, bytes):
        return body, dict(headers) if headers else None
    if isinstance(body, bytearray | memoryview):
        return bytes(body), dict(headers) if headers else None
    if isinstance(body, str):
        return body.encode(), dict(headers) if headers else None
    try:
        data = msgspec.json.encode(body)
    except (TypeError, msgspec.EncodeError) as exc:
        raise InvalidArgument(f"body must be bytes, str or JSON-able: {exc}") from None
    merged = {"content-type": JSON_TYPE}
    if headers:
        merged.update(headers)
    return data, merged


def convert_reply(value: object, kind: type[T], *, from_attributes: bool = False) -> T:
    """A broker's reply as the public type ``kind`` (decoded MessagePack
    from a remote broker, the broker's own values from an embedded one)."""
    try:
        return msgspec.convert(value, kind, from_attributes=from_attributes)
    except msgspec.ValidationError as exc:
        raise ConveyorError(f"unexpected reply from the broker: {exc}") from None


class SettleOutcome(msgspec.Struct, frozen=True):
    """One item of a settle batch's reply: ok (with the new deadline of an
    extend), or the error's code and message."""

    ok: bool
    code: str | None = None
    message: str | None = None
    deadline: float | None = None

    def error(self) -> ConveyorError | None:
        if self.ok:
            return None
        return error_for_code(str(self.code), str(self.message))


# Bytes of results, errors and reasons one settle batch carries at most (a
# single item may carry more, up to the broker's max_body), and its items.
SETTLE_BATCH_BYTES = 4 << 20
SETTLE_BATCH_ITEMS = 1000


class _SettleBatch:
    """Settles of one kind made in one event-loop turn, sent as one request."""

    __slots__ = ("futures", "items", "size")

    def __init__(self) -> None:
        self.items: list[dict[str, object]] = []
        self.futures: list[asyncio.Future[SettleOutcome]] = []
        self.size = 0

    def add(
        self, item: dict[str, object], future: asyncio.Future[SettleOutcome], size: int
    ) -> None:
        self.items.append(item)
        self.futures.append(future)
        self.size += size

    def full(self, size: int) -> bool:
        """Whether an item of ``size`` must go in the next batch."""
        if not self.items:
            return False
        return self.size + size > SETTLE_BATCH_BYTES or len(self.items) >= SETTLE_BATCH_ITEMS


def _settle_size(result: bytes | None = None, text: str | None = None) -> int:
    """What a settle item adds to its batch's frame, roughly: its free-form
    field (an ack's result, a nack's error, a dead's reason) and a fixed
    part for the id, token and numbers."""
    return 64 + len(result or text or b"")


class Delivery:
    """A leased message, with the calls that settle its lease."""

    __slots__ = ("_client", "message")

    def __init__(self, client: AsyncClient, message: types.Delivery) -> None:
        self._client = client
        self.message = message

    @property
    def id(self) -> str:
        return self.message.id

    @property
    def queue(self) -> str:
        return self.message.queue

    @property
    def body(self) -> bytes:
        return self.message.body

    @property
    def headers(self) -> dict[str, str]:
        return self.message.headers

    @property
    def priority(self) -> int:
        return self.message.priority

    @property
    def group(self) -> str | None:
        return self.message.group

    @property
    def attempts(self) -> int:
        """Deliveries of this message so far, this one included."""
        return self.message.attempts

    @property
    def max_attempts(self) -> int:
        return self.message.max_attempts

    @property
    def token(self) -> int:
        """The lease's fencing token: it grows with every delivery."""
        return self.message.token

    @property
    def deadline(self) -> float:
        """When the lease ends, in Unix seconds by the broker's clock."""
        return self.message.deadline

    @property
    def lease(self) -> float:
        """Seconds the lease lasts from its grant (for this side's own clock)."""
        return self.message.lease

    @property
    def enqueued_at(self) -> float:
        return self.message.enqueued_at

    def json(self) -> Any:  # a JSON document is any value: the one Any of the API
        return json.loads(self.message.body)

    def text(self) -> str:
        return bytes(self.message.body).decode()

    def __repr__(self) -> str:
        return f"<Delivery {self.id} of {self.queue!r} attempt {self.attempts} token {self.token}>"

    async def ack(self, result: object = None) -> None:
        """Done. ``result`` (bytes, str or JSON-able) is kept for ``Client.result``."""
        await self._client.ack(self.id, self.token, result)

    async def nack(self, delay: float | None = None, error: str | None = None) -> None:
        """Failed: retry after ``delay`` (default: the queue's backoff)."""
        await self._client.nack(self.id, self.token, delay=delay, error=error)

    async def release(self) -> None:
        """Hand it back unhandled: ready again at once for any consumer, and
        this delivery does not count as an attempt. For a delivery that never
        reached the code that handles it; one that failed is nacked."""
        await self._client.release(self.id, self.token)

    async def extend(self, seconds: float) -> float:
        """Keep the lease ``seconds`` more from now; the new deadline."""
        return await self._client.extend(self.id, self.token, seconds)

    async def dead(self, reason: str) -> None:
        """Give up on it: into the queue's dead letters."""
        await self._client.dead(self.id, self.token, reason)


class AsyncClient:
    """A connection to a broker (``conveyor://``) or an embedded one
    (``sqlite:///file.db``, ``memory://``). ``connect_timeout``: seconds a
    client that has not reached its broker yet tries every address before it
    raises BrokerUnreachable; ``timeout``: seconds a call whose connection
    was lost waits for a new one."""

    def __init__(
        self,
        url: str | None = None,
        *,
        name: str = "",
        timeout: float = 30.0,
        connect_timeout: float = 1.0,
        token: str | None = None,
    ) -> None:
        self.url = resolve(url)
        self._transport: Transport = open_transport(
            self.url, name=name, timeout=timeout, connect_timeout=connect_timeout, token=token
        )
        self._batches: dict[str, _SettleBatch] = {}
        # Settle batches on their way, and releases of unread deliveries.
        self._sending = TaskSet("conveyor client settles")

    async def connect(self) -> Self:
        await self._transport.connect()
        return self

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):  # settles and releases under way
            await asyncio.wait_for(self._sending.wait(), 2.0)
        await self._transport.close()
        # What the closed transport left is cancelled. The set stays open: a
        # settle made after the close fails with BrokerClosed, as any call.
        self._sending.cancel()
        await self._sending.wait()

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, op: str, args: dict[str, object], kind: type[T]) -> T:
        return convert_reply(await self._transport.call(op, args), kind)

    # -- queues --------------------------------------------------------------

    async def create_queue(
        self, name: str, /, *, exist_ok: bool = True, **settings: float | None
    ) -> QueueConfig:
        """Settings: those of ``QueueConfig`` (visibility_timeout, max_attempts...)."""
        args = {"queue": name, "settings": settings, "exist_ok": exist_ok}
        return await self._call("create_queue", args, QueueConfig)

    async def configure_queue(self, name: str, /, **settings: float | None) -> QueueConfig:
        return await self._call(
            "configure_queue", {"queue": name, "settings": settings}, QueueConfig
        )

    async def delete_queue(self, name: str) -> None:
        await self._call("delete_queue", {"queue": name}, type(None))

    async def queues(self) -> list[QueueConfig]:
        return await self._call("queues", {}, list[QueueConfig])

    async def purge(self, queue: str) -> int:
        return await self._call("purge", {"queue": queue}, int)

    async def stats(self, queue: str) -> QueueStats:
        return await self._call("stats", {"queue": queue}, QueueStats)

    async def sessions(self) -> list[SessionInfo]:
        return await self._call("sessions", {}, list[SessionInfo])

    # -- producing -----------------------------------------------------------

    async def enqueue(
        self,
        queue: str,
        body: object,
        *,
        priority: int = 0,
        delay: float | None = None,
        ttl: float | None = None,
        dedup_key: str | None = None,
        group: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_attempts: int | None = None,
    ) -> EnqueueResult:
        """Store one message; returns once it is durable."""
        data, hdrs = encode_body(body, headers)
        message = NewMessage(
            body=data,
            priority=priority,
            delay=delay,
            ttl=ttl,
            dedup_key=dedup_key,
            group=group,
            headers=hdrs,
            max_attempts=max_attempts,
        )
        return (await self._enqueue(queue, [message]))[0]

    async def enqueue_many(self, queue: str, items: Iterable[object]) -> list[EnqueueResult]:
        """Store a batch, all or nothing. Items are NewMessage, or bodies."""
        messages = []
        for item in items:
            if isinstance(item, NewMessage):
                messages.append(item)
            else:
                data, hdrs = encode_body(item, None)
                messages.append(NewMessage(body=data, headers=hdrs))
        return await self._enqueue(queue, messages)

    async def _enqueue(self, queue: str, messages: list[NewMessage]) -> list[EnqueueResult]:
        # The key makes a retry after a lost connection harmless.
        args: dict[str, object] = {
            "queue": queue,
            "messages": messages,
            "idempotency_key": uuid.uuid4().hex,
        }
        return await self._call("enqueue", args, list[EnqueueResult])

    async def publish(
        self,
        topic: str,
        body: object,
        *,
        priority: int = 0,
        delay: float | None = None,
        ttl: float | None = None,
        dedup_key: str | None = None,
        group: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_attempts: int | None = None,
    ) -> dict[str, EnqueueResult]:
        """One copy into every queue bound to the topic; the id per queue."""
        data, hdrs = encode_body(body, headers)
        message = NewMessage(
            body=data,
            priority=priority,
            delay=delay,
            ttl=ttl,
            dedup_key=dedup_key,
            group=group,
            headers=hdrs,
            max_attempts=max_attempts,
        )
        args = {"topic": topic, "message": message, "idempotency_key": uuid.uuid4().hex}
        return await self._call("publish", args, dict[str, EnqueueResult])

    async def bind(self, topic: str, queue: str) -> None:
        """Subscribe ``queue`` to a topic pattern (``*`` one word, ``#`` any)."""
        await self._call("bind", {"pattern": topic, "queue": queue}, type(None))

    async def unbind(self, topic: str, queue: str) -> bool:
        return await self._call("unbind", {"pattern": topic, "queue": queue}, bool)

    async def bindings(self) -> list[Binding]:
        return await self._call("bindings", {}, list[Binding])

    # -- consuming -----------------------------------------------------------

    async def receive(
        self,
        queue: str,
        max: int = 1,
        wait: float = 0.0,
        visibility: float | None = None,
    ) -> list[Delivery]:
        """Lease up to ``max`` messages, waiting up to ``wait`` s for one."""
        args: dict[str, object] = {
            "queue": queue,
            "max": max,
            "wait": wait,
            "visibility": visibility,
        }
        got = await self._call("receive", args, list[types.Delivery])
        return [Delivery(self, d) for d in got]

    async def consume(self, queue: str, prefetch: int = 10) -> AsyncIterator[Delivery]:
        """Deliveries as they come, at most ``prefetch`` unsettled at once.
        Settle each one (ack, nack, dead) to make room for the next."""
        box: asyncio.Queue[Sequence[object] | ConveyorError] = asyncio.Queue()
        sub = await self._transport.subscribe(queue, prefetch, box.put_nowait)
        unread: collections.deque[object] = collections.deque()  # of the push at hand
        try:
            while True:
                item = await box.get()
                if isinstance(item, ConveyorError):
                    raise item
                unread.extend(item)
                while unread:
                    yield Delivery(self, convert_reply(unread.popleft(), types.Delivery))
        finally:
            await self._transport.unsubscribe(sub)
            self._release_unread(unread, box)

    def _release_unread(
        self, unread: Iterable[object], box: asyncio.Queue[Sequence[object] | ConveyorError]
    ) -> None:
        """Deliveries that reached a closed consume but were never yielded (the
        rest of the push at hand, and the pushes after it) go back to the
        queue at once, not counted as attempts (``release``)."""
        pending = list(unread)
        while not box.empty():
            item = box.get_nowait()
            if not isinstance(item, ConveyorError):
                pending.extend(item)
        if pending:
            self._sending.spawn(self._release([convert_reply(d, types.Delivery) for d in pending]))

    async def _release(self, deliveries: list[types.Delivery]) -> None:
        for outcome in await asyncio.gather(
            *(self.release(d.id, d.token) for d in deliveries), return_exceptions=True
        ):
            if isinstance(outcome, BaseException) and not isinstance(outcome, ConveyorError):
                raise outcome  # a lease lost meanwhile needs no release

    async def ack(self, id: str, token: int, result: object = None) -> None:
        data = None if result is None else encode_body(result, None)[0]
        item = {"id": id, "token": token, "result": data}
        await self._settle("ack", item, _settle_size(result=data))

    async def nack(
        self,
        id: str,
        token: int,
        *,
        delay: float | None = None,
        error: str | None = None,
    ) -> None:
        item = {"id": id, "token": token, "delay": delay, "error": error}
        await self._settle("nack", item, _settle_size(text=error))

    async def release(self, id: str, token: int) -> None:
        """Hand a delivery back unhandled: ready again at once, its attempt
        not counted (see ``Delivery.release``)."""
        item = {"id": id, "token": token, "undelivered": True}
        await self._settle("nack", item, _settle_size())

    async def extend(self, id: str, token: int, seconds: float) -> float:
        item = {"id": id, "token": token, "seconds": seconds}
        deadline = (await self._settle("extend", item, _settle_size())).deadline
        if deadline is None:
            raise ConveyorError("unexpected reply from the broker: an extend without a deadline")
        return deadline

    async def dead(self, id: str, token: int, reason: str) -> None:
        item = {"id": id, "token": token, "reason": reason}
        await self._settle("dead", item, _settle_size(text=reason))

    async def _settle(self, op: str, item: dict[str, object], size: int) -> SettleOutcome:
        # Settles made in the same event-loop turn travel as one batch, cut
        # where it would pass SETTLE_BATCH_BYTES (acks carrying large results
        # would otherwise make a frame the broker refuses).
        batch = self._batches.get(op)
        if batch is not None and batch.full(size):
            self._flush(op)
            batch = None
        loop = asyncio.get_running_loop()
        if batch is None:
            batch = self._batches[op] = _SettleBatch()
            loop.call_soon(self._flush, op)
        future: asyncio.Future[SettleOutcome] = loop.create_future()
        batch.add(item, future, size)
        return await future

    def _flush(self, op: str) -> None:
        batch = self._batches.pop(op, None)
        if batch is None:  # sent already, cut short by its size
            return
        self._sending.spawn(self._send_batch(op, batch.items, batch.futures))

    async def _send_batch(
        self,
        op: str,
        items: list[dict[str, object]],
        futures: list[asyncio.Future[SettleOutcome]],
    ) -> None:
        try:
            reply = await self._transport.call(op, {"items": items})
            # An embedded broker answers with its own Outcome structs.
            outcomes = convert_reply(reply, list[SettleOutcome], from_attributes=True)
        except BaseException as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for future, outcome in zip(futures, outcomes, strict=True):
            if future.done():
                continue
            error = outcome.error()
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(outcome)

    # -- dead letters and results ------------------------------------------------

    async def dead_letters(
        self, queue: str, limit: int = 100, after: str | None = None
    ) -> list[Message]:
        args = {"queue": queue, "limit": limit, "after": after}
        return await self._call("dead_letters", args, list[Message])

    async def redrive(self, queue: str, ids: list[str] | None = None) -> int:
        return await self._call("redrive", {"queue": queue, "ids": ids}, int)

    async def result(self, message_id: str, timeout: float = 30.0) -> Result:
        """The message's result, waiting up to ``timeout`` s (ResultTimeout)."""
        return await self._call("result", {"id": message_id, "timeout": timeout}, Result)
