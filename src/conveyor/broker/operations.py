"""Every broker operation by name, with a typed argument struct.

The native protocol, the HTTP API and the in-process client all dispatch
through this one table, so an operation means the same thing on every
front end. ``call`` converts the raw arguments (a dict from MessagePack or
JSON) into the operation's struct, which rejects a wrong type or unknown
field with InvalidArgument, then runs the handler against the broker.

Receiving needs a consumer session: the caller passes a ``SessionSource``
(the connection's lazily opened session, or the HTTP request's).

A caller that bounds the bytes its clients make it hold passes a
``ReplyBudget`` too: an operation whose reply carries messages reserves from
it as it reads them (broker/replies.py); one whose reply grows with its
arguments or with the store's contents reserves its bound before it runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec

from conveyor.broker.broker import Broker
from conveyor.broker.replies import ReplyBudget
from conveyor.core import validation
from conveyor.core.errors import ConveyorError, InvalidArgument, UnknownOperation
from conveyor.core.types import Ack, Dead, Extend, Nack, NewMessage


class SessionSource(Protocol):
    async def session(self, capacity: int = 1) -> str: ...


class _Args(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class QueueName(_Args, frozen=True):
    queue: str


class CreateQueue(_Args, frozen=True):
    queue: str
    settings: dict[str, Any] = {}
    exist_ok: bool = True


class ConfigureQueue(_Args, frozen=True):
    queue: str
    settings: dict[str, Any]


class NoArgs(_Args, frozen=True):
    pass


class Enqueue(_Args, frozen=True):
    queue: str
    messages: list[NewMessage]
    idempotency_key: str | None = None


class Publish(_Args, frozen=True):
    topic: str
    message: NewMessage
    idempotency_key: str | None = None


class BindArgs(_Args, frozen=True):
    pattern: str
    queue: str


class Receive(_Args, frozen=True):
    queue: str
    max: int = 1
    wait: float = 0.0
    visibility: float | None = None


class AckArgs(_Args, frozen=True):
    items: list[Ack]


class NackArgs(_Args, frozen=True):
    items: list[Nack]


class ExtendArgs(_Args, frozen=True):
    items: list[Extend]


class DeadArgs(_Args, frozen=True):
    items: list[Dead]


class DeadLetters(_Args, frozen=True):
    queue: str
    limit: int = 100
    after: str | None = None


class Redrive(_Args, frozen=True):
    queue: str
    ids: list[str] | None = None


class ResultArgs(_Args, frozen=True):
    id: str
    timeout: float = 0.0


class Outcome(msgspec.Struct, frozen=True, omit_defaults=True):
    """One item of a settle batch: ok, or the error's code and message."""

    ok: bool
    code: str | None = None
    message: str | None = None
    deadline: float | None = None


Handler = Callable[[Broker, Any, SessionSource, ReplyBudget | None], Awaitable[Any]]
# The bytes to reserve for an operation's reply before it runs, from its
# arguments and max_reply_bytes.
ReplyBound = Callable[[Any, int], int]

# The most bytes one item of a batch adds to the reply: an Outcome with a
# LeaseLost message, an EnqueueResult.
OUTCOME_BYTES = 320
ENQUEUED_BYTES = 64


def _outcomes(results: list[Any]) -> list[Outcome]:
    out = []
    for r in results:
        if isinstance(r, ConveyorError):
            out.append(Outcome(False, r.code, r.message))
        elif isinstance(r, float):
            out.append(Outcome(True, deadline=r))
        else:
            out.append(Outcome(True))
    return out


async def _receive(b: Broker, a: Receive, s: SessionSource, r: ReplyBudget | None) -> Any:
    session = await s.session(a.max)
    return await b.receive(
        session, a.queue, max=a.max, wait=a.wait, visibility=a.visibility, budget=r
    )


async def _publish(b: Broker, a: Publish, s: SessionSource, r: ReplyBudget | None) -> Any:
    return await b.publish_message(a.topic, a.message, idempotency_key=a.idempotency_key)


async def _ack(b: Broker, a: AckArgs, s: SessionSource, r: ReplyBudget | None) -> Any:
    return _outcomes(await b.ack_many(a.items))


async def _nack(b: Broker, a: NackArgs, s: SessionSource, r: ReplyBudget | None) -> Any:
    return _outcomes(await b.nack_many(a.items))


async def _extend(b: Broker, a: ExtendArgs, s: SessionSource, r: ReplyBudget | None) -> Any:
    return _outcomes(await b.extend_many(a.items))


async def _dead(b: Broker, a: DeadArgs, s: SessionSource, r: ReplyBudget | None) -> Any:
    return _outcomes(await b.dead_many(a.items))


class Operation(msgspec.Struct, frozen=True):
    args: type[_Args]
    handler: Handler
    summary: str
    reply: ReplyBound | None = None  # None: a small reply, or one that reserves as it reads


def _per_item(size: int) -> ReplyBound:
    return lambda a, _: size * len(a.items) + 64


def _whole(a: Any, max_reply: int) -> int:
    """A list that grows with the store (queues, bindings, sessions): it may
    take a whole reply (and past that, is refused with ReplyTooLarge)."""
    return max_reply


OPERATIONS: dict[str, Operation] = {
    "create_queue": Operation(
        CreateQueue,
        lambda b, a, s, r: b.create_queue(
            a.queue, exist_ok=a.exist_ok, **validation.queue_settings(a.settings)
        ),
        "Create a queue (the same settings again: returns it).",
    ),
    "configure_queue": Operation(
        ConfigureQueue,
        lambda b, a, s, r: b.configure_queue(a.queue, **validation.queue_settings(a.settings)),
        "Change a queue's settings.",
    ),
    "delete_queue": Operation(
        QueueName, lambda b, a, s, r: b.delete_queue(a.queue), "Delete a queue and its messages."
    ),
    "get_queue": Operation(
        QueueName, lambda b, a, s, r: b.get_queue(a.queue), "A queue's settings."
    ),
    "queues": Operation(
        NoArgs, lambda b, a, s, r: b.queues(), "Every queue with its settings.", _whole
    ),
    "purge": Operation(
        QueueName, lambda b, a, s, r: b.purge(a.queue), "Remove a queue's waiting messages."
    ),
    "enqueue": Operation(
        Enqueue,
        lambda b, a, s, r: b.enqueue_many(a.queue, a.messages, idempotency_key=a.idempotency_key),
        "Enqueue a batch of messages, all or nothing.",
        lambda a, _: ENQUEUED_BYTES * len(a.messages) + 64,
    ),
    "publish": Operation(
        Publish,
        _publish,
        "One copy into every queue bound to the topic, atomically.",
        lambda a, _: 64 * 1024,  # a result per bound queue
    ),
    "bind": Operation(
        BindArgs, lambda b, a, s, r: b.bind(a.pattern, a.queue), "Bind a queue to a topic pattern."
    ),
    "unbind": Operation(
        BindArgs, lambda b, a, s, r: b.unbind(a.pattern, a.queue), "Remove a binding."
    ),
    "bindings": Operation(NoArgs, lambda b, a, s, r: b.bindings(), "Every topic binding.", _whole),
    "receive": Operation(Receive, _receive, "Lease up to max messages, long-polling up to wait s."),
    "ack": Operation(
        AckArgs, _ack, "Acknowledge leases (optionally with a result).", _per_item(OUTCOME_BYTES)
    ),
    "nack": Operation(
        NackArgs, _nack, "Give leases back for a retry after backoff.", _per_item(OUTCOME_BYTES)
    ),
    "extend": Operation(
        ExtendArgs, _extend, "Extend leases to now + seconds.", _per_item(OUTCOME_BYTES)
    ),
    "dead": Operation(DeadArgs, _dead, "Dead-letter leased messages.", _per_item(OUTCOME_BYTES)),
    "dead_letters": Operation(
        DeadLetters,
        lambda b, a, s, r: b.dead_letters(a.queue, limit=a.limit, after=a.after, budget=r),
        "List a queue's dead letters, oldest first (a page may hold fewer than limit).",
    ),
    "redrive": Operation(
        Redrive, lambda b, a, s, r: b.redrive(a.queue, a.ids), "Make dead letters ready again."
    ),
    "result": Operation(
        ResultArgs,
        lambda b, a, s, r: b.result(a.id, timeout=a.timeout, budget=r),
        "A message's result, waiting up to timeout s.",
    ),
    "stats": Operation(QueueName, lambda b, a, s, r: b.stats(a.queue), "A queue's statistics."),
    "sessions": Operation(
        NoArgs, lambda b, a, s, r: b.sessions(), "Live consumer sessions.", _whole
    ),
}


def parse_args(op: Operation, raw: object) -> Any:
    if raw is None:
        raw = {}
    try:
        return msgspec.convert(raw, op.args)
    except msgspec.ValidationError as exc:
        raise InvalidArgument(f"bad arguments: {exc}") from None


async def call(
    broker: Broker,
    name: str,
    raw: object,
    sessions: SessionSource,
    budget: ReplyBudget | None = None,
) -> Any:
    """Run operation ``name`` with raw arguments; UnknownOperation if none."""
    op = OPERATIONS.get(name) if isinstance(name, str) else None
    if op is None:
        raise UnknownOperation(f"no operation named {validation.short_repr(name)}")
    args = parse_args(op, raw)
    if budget is not None and op.reply is not None:
        max_reply = broker.config.max_reply_bytes
        bound = min(op.reply(args, max_reply), max_reply)  # a batch over max_batch is refused
        await budget.reserve(bound, bound)
    return await op.handler(broker, args, sessions, budget)
