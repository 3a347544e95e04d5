"""Bad inputs: each gets its typed error, with its code, and leaves the store
as it was; the broker goes on serving (docs/semantics.md, "Enqueue",
"Errors").

Every case runs against the same small world (a queue with a ready, a leased,
an acked and a dead message, a binding and a session), which is compared
whole before and after the case."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from conveyor.broker import operations
from conveyor.broker.broker import Broker
from conveyor.core.errors import (
    BodyTooLarge,
    BrokerClosed,
    ConveyorError,
    InvalidArgument,
    LeaseLost,
    QueueExists,
    QueueNotFound,
    SessionNotFound,
)
from conveyor.core.types import QUEUE_SETTINGS, Ack, Dead, Delivery, Extend, Nack, NewMessage
from conveyor.core.wire import UnknownOperation

LIMIT = 64 * 1024  # the broker fixture's max_body
GOOD = NewMessage(body=b"fine")
NO_SESSION = "00000000deadbeef"


@dataclass
class World:
    session: str
    leased: Delivery
    acked: Delivery
    ready_id: str


async def build(broker: Broker) -> World:
    await broker.create_queue("q", max_attempts=3, max_length=50)
    await broker.bind("t.#", "q")
    session = await broker.open_session("consumer", timeout=1000)
    await broker.enqueue("q", b"lease me", priority=9)
    [leased] = await broker.receive(session, "q", visibility=3600)
    await broker.enqueue("q", b"ack me", priority=9)
    [acked] = await broker.receive(session, "q")
    await broker.ack(acked.id, acked.token)
    await broker.enqueue("q", b"kill me", priority=9)
    [killed] = await broker.receive(session, "q")
    await broker.dead(killed.id, killed.token, "bad")
    ready = await broker.enqueue("q", b"ready", dedup_key="dk")
    return World(session, leased, acked, ready.id)


async def snapshot(broker: Broker) -> Any:
    queues = await broker.queues()
    per_queue = [
        (await broker.stats(c.name), await broker.dead_letters(c.name, limit=1000)) for c in queues
    ]
    return (queues, per_queue, await broker.bindings(), await broker.sessions())


Case = tuple[str, Callable[[Broker, World], Awaitable[Any]], type[ConveyorError]]

QUEUE_CASES: list[Case] = [
    ("empty queue name", lambda b, w: b.create_queue(""), InvalidArgument),
    ("name starting with '-'", lambda b, w: b.create_queue("-q"), InvalidArgument),
    ("name starting with '.'", lambda b, w: b.create_queue(".q"), InvalidArgument),
    ("name with a space", lambda b, w: b.create_queue("a b"), InvalidArgument),
    ("name with a slash", lambda b, w: b.create_queue("a/b"), InvalidArgument),
    ("name of 201 characters", lambda b, w: b.create_queue("q" * 201), InvalidArgument),
    ("name not a string", lambda b, w: b.create_queue(7), InvalidArgument),
    ("unknown setting", lambda b, w: b.create_queue("n", colour="red"), InvalidArgument),
    ("visibility 0", lambda b, w: b.create_queue("n", visibility_timeout=0), InvalidArgument),
    ("max_attempts 0", lambda b, w: b.create_queue("n", max_attempts=0), InvalidArgument),
    ("max_length 0", lambda b, w: b.create_queue("n", max_length=0), InvalidArgument),
    ("negative dedup window", lambda b, w: b.create_queue("n", dedup_window=-1), InvalidArgument),
    ("dedup window as text", lambda b, w: b.create_queue("n", dedup_window="5"), InvalidArgument),
    (
        "infinite dedup window",
        lambda b, w: b.create_queue("n", dedup_window=math.inf),
        InvalidArgument,
    ),
    ("buckets 0", lambda b, w: b.create_queue("n", buckets=0), InvalidArgument),
    ("jitter above 1", lambda b, w: b.create_queue("n", retry_jitter=1.5), InvalidArgument),
    ("negative retry base", lambda b, w: b.create_queue("n", retry_base=-1), InvalidArgument),
    ("result_ttl 0", lambda b, w: b.create_queue("n", result_ttl=0), InvalidArgument),
    ("existing, other settings", lambda b, w: b.create_queue("q", max_attempts=9), QueueExists),
    ("configure bad value", lambda b, w: b.configure_queue("q", dedup_window=-5), InvalidArgument),
    ("configure unknown", lambda b, w: b.configure_queue("q", colour="red"), InvalidArgument),
    ("configure missing", lambda b, w: b.configure_queue("nope", max_attempts=2), QueueNotFound),
    ("get missing", lambda b, w: b.get_queue("nope"), QueueNotFound),
    ("stats missing", lambda b, w: b.stats("nope"), QueueNotFound),
    ("stats bad name", lambda b, w: b.stats(""), InvalidArgument),
    ("purge missing", lambda b, w: b.purge("nope"), QueueNotFound),
    ("delete missing", lambda b, w: b.delete_queue("nope"), QueueNotFound),
    ("delete bad name", lambda b, w: b.delete_queue("a b"), InvalidArgument),
]

ENQUEUE_CASES: list[Case] = [
    ("unknown queue", lambda b, w: b.enqueue("nope", b"x"), QueueNotFound),
    ("bad queue name", lambda b, w: b.enqueue("", b"x"), InvalidArgument),
    ("body over the limit", lambda b, w: b.enqueue("q", b"x" * (LIMIT + 1)), BodyTooLarge),
    ("body as text", lambda b, w: b.enqueue("q", "text"), InvalidArgument),
    ("body None", lambda b, w: b.enqueue("q", None), InvalidArgument),
    ("priority -1", lambda b, w: b.enqueue("q", b"x", priority=-1), InvalidArgument),
    ("priority 10", lambda b, w: b.enqueue("q", b"x", priority=10), InvalidArgument),
    ("priority 1.5", lambda b, w: b.enqueue("q", b"x", priority=1.5), InvalidArgument),
    ("priority True", lambda b, w: b.enqueue("q", b"x", priority=True), InvalidArgument),
    ("negative delay", lambda b, w: b.enqueue("q", b"x", delay=-1), InvalidArgument),
    ("NaN delay", lambda b, w: b.enqueue("q", b"x", delay=math.nan), InvalidArgument),
    ("infinite delay", lambda b, w: b.enqueue("q", b"x", delay=math.inf), InvalidArgument),
    ("ttl 0", lambda b, w: b.enqueue("q", b"x", ttl=0), InvalidArgument),
    ("negative ttl", lambda b, w: b.enqueue("q", b"x", ttl=-5), InvalidArgument),
    ("empty dedup key", lambda b, w: b.enqueue("q", b"x", dedup_key=""), InvalidArgument),
    ("long dedup key", lambda b, w: b.enqueue("q", b"x", dedup_key="k" * 256), InvalidArgument),
    ("empty group", lambda b, w: b.enqueue("q", b"x", group=""), InvalidArgument),
    ("group not a string", lambda b, w: b.enqueue("q", b"x", group=5), InvalidArgument),
    ("NUL in a group", lambda b, w: b.enqueue("q", b"x", group="a\x00"), InvalidArgument),
    ("lone surrogate", lambda b, w: b.enqueue("q", b"x", dedup_key="\udc80"), InvalidArgument),
    ("NUL in a header", lambda b, w: b.enqueue("q", b"x", headers={"a": "\x00"}), InvalidArgument),
    ("header value int", lambda b, w: b.enqueue("q", b"x", headers={"a": 1}), InvalidArgument),
    ("empty header name", lambda b, w: b.enqueue("q", b"x", headers={"": "v"}), InvalidArgument),
    ("headers not a map", lambda b, w: b.enqueue("q", b"x", headers="a=b"), InvalidArgument),
    ("max_attempts 0", lambda b, w: b.enqueue("q", b"x", max_attempts=0), InvalidArgument),
    ("empty batch", lambda b, w: b.enqueue_many("q", []), InvalidArgument),
    ("batch of non-messages", lambda b, w: b.enqueue_many("q", [b"x"]), InvalidArgument),
    (
        "batch with one bad priority",
        lambda b, w: b.enqueue_many("q", [GOOD, NewMessage(body=b"x", priority=11), GOOD]),
        InvalidArgument,
    ),
    (
        "batch with one oversized body",
        lambda b, w: b.enqueue_many("q", [GOOD, NewMessage(body=b"x" * (LIMIT + 1))]),
        BodyTooLarge,
    ),
    (
        "empty idempotency key",
        lambda b, w: b.enqueue_many("q", [GOOD], idempotency_key=""),
        InvalidArgument,
    ),
    ("publish bad topic", lambda b, w: b.publish("t..x", b"x"), InvalidArgument),
    ("publish a pattern", lambda b, w: b.publish("t.*", b"x"), InvalidArgument),
    ("publish bad priority", lambda b, w: b.publish("t.x", b"x", priority=10), InvalidArgument),
    (
        "publish oversized, unbound topic",
        lambda b, w: b.publish("unbound", b"x" * (LIMIT + 1)),
        BodyTooLarge,
    ),
    ("bind bad pattern", lambda b, w: b.bind("a..b", "q"), InvalidArgument),
    ("bind missing queue", lambda b, w: b.bind("a.b", "nope"), QueueNotFound),
    ("unbind bad pattern", lambda b, w: b.unbind("", "q"), InvalidArgument),
    ("unbind bad queue name", lambda b, w: b.unbind("t.#", "a b"), InvalidArgument),
]

CONSUME_CASES: list[Case] = [
    ("receive missing queue", lambda b, w: b.receive(w.session, "nope"), QueueNotFound),
    ("receive bad queue name", lambda b, w: b.receive(w.session, ""), InvalidArgument),
    ("receive max 0", lambda b, w: b.receive(w.session, "q", max=0), InvalidArgument),
    ("receive max 1001", lambda b, w: b.receive(w.session, "q", max=1001), InvalidArgument),
    ("receive negative wait", lambda b, w: b.receive(w.session, "q", wait=-1), InvalidArgument),
    ("receive too long a wait", lambda b, w: b.receive(w.session, "q", wait=61), InvalidArgument),
    ("visibility 0", lambda b, w: b.receive(w.session, "q", visibility=0), InvalidArgument),
    ("unknown session", lambda b, w: b.receive(NO_SESSION, "q"), SessionNotFound),
    ("heartbeat unknown", lambda b, w: b.heartbeat(NO_SESSION), SessionNotFound),
    ("session capacity 0", lambda b, w: b.open_session("x", capacity=0), InvalidArgument),
    ("session timeout 0", lambda b, w: b.open_session("x", timeout=0), InvalidArgument),
    ("session name not text", lambda b, w: b.open_session(5), InvalidArgument),
]

SETTLE_CASES: list[Case] = [
    ("stale token", lambda b, w: b.ack(w.leased.id, w.leased.token + 1), LeaseLost),
    ("double ack", lambda b, w: b.ack(w.acked.id, w.acked.token), LeaseLost),
    ("ack of a ready message", lambda b, w: b.ack(w.ready_id, 1), LeaseLost),
    ("ack unknown id", lambda b, w: b.ack("0000000000000abc", 1), LeaseLost),
    ("nack stale", lambda b, w: b.nack(w.leased.id, w.leased.token + 1), LeaseLost),
    ("extend stale", lambda b, w: b.extend(w.leased.id, w.leased.token + 1, 5), LeaseLost),
    ("dead stale", lambda b, w: b.dead(w.leased.id, w.leased.token + 1, "x"), LeaseLost),
    ("nack after ack", lambda b, w: b.nack(w.acked.id, w.acked.token), LeaseLost),
    ("ack id not hex", lambda b, w: b.ack("zz", 1), InvalidArgument),
    ("ack id with a sign", lambda b, w: b.ack("-000000000000001", 1), InvalidArgument),
    ("ack token 0", lambda b, w: b.ack(w.leased.id, 0), InvalidArgument),
    ("ack token negative", lambda b, w: b.ack(w.leased.id, -3), InvalidArgument),
    ("ack token True", lambda b, w: b.ack(w.leased.id, True), InvalidArgument),
    ("ack token text", lambda b, w: b.ack(w.leased.id, "1"), InvalidArgument),
    (
        "ack result as text",
        lambda b, w: b.ack(w.leased.id, w.leased.token, result="x"),
        InvalidArgument,
    ),
    (
        "ack result too large",
        lambda b, w: b.ack(w.leased.id, w.leased.token, result=b"x" * (LIMIT + 1)),
        BodyTooLarge,
    ),
    (
        "nack negative delay",
        lambda b, w: b.nack(w.leased.id, w.leased.token, delay=-1),
        InvalidArgument,
    ),
    (
        "nack error not text",
        lambda b, w: b.nack(w.leased.id, w.leased.token, error=5),
        InvalidArgument,
    ),
    ("extend by 0", lambda b, w: b.extend(w.leased.id, w.leased.token, 0), InvalidArgument),
    (
        "extend by NaN",
        lambda b, w: b.extend(w.leased.id, w.leased.token, math.nan),
        InvalidArgument,
    ),
    ("dead without reason", lambda b, w: b.dead(w.leased.id, w.leased.token, ""), InvalidArgument),
    ("empty ack batch", lambda b, w: b.ack_many([]), InvalidArgument),
    (
        "ack batch with a bad item",
        lambda b, w: b.ack_many([Ack(w.leased.id, w.leased.token), Ack("bad", 1)]),
        InvalidArgument,
    ),
    (
        "nack batch with wrong item type",
        lambda b, w: b.nack_many([Ack(w.leased.id, w.leased.token)]),
        InvalidArgument,
    ),
    (
        "extend batch with a bad item",
        lambda b, w: b.extend_many([Extend(w.leased.id, w.leased.token, -1)]),
        InvalidArgument,
    ),
    (
        "dead batch with a bad item",
        lambda b, w: b.dead_many([Dead(w.leased.id, w.leased.token, "ok"), Dead("x", 1, "y")]),
        InvalidArgument,
    ),
    (
        "nack with an older token",
        lambda b, w: b.nack(w.leased.id, w.leased.token - 1 or 10**9),
        LeaseLost,
    ),
    ("dead letters of missing queue", lambda b, w: b.dead_letters("nope"), QueueNotFound),
    ("dead letters limit 0", lambda b, w: b.dead_letters("q", limit=0), InvalidArgument),
    ("dead letters bad after", lambda b, w: b.dead_letters("q", after="x"), InvalidArgument),
    ("redrive missing queue", lambda b, w: b.redrive("nope"), QueueNotFound),
    ("redrive bad id", lambda b, w: b.redrive("q", ["not-an-id"]), InvalidArgument),
    ("result bad id", lambda b, w: b.result("bad"), InvalidArgument),
    ("result negative timeout", lambda b, w: b.result(w.ready_id, timeout=-1), InvalidArgument),
]


async def check_cases(broker: Broker, cases: list[Case]) -> None:
    world = await build(broker)
    failures = []
    for name, call, expected in cases:
        before = await snapshot(broker)
        try:
            await call(broker, world)
        except ConveyorError as exc:
            if type(exc) is not expected or exc.code != expected.code:
                failures.append(f"{name}: {type(exc).__name__}({exc.code}), not {expected.code}")
        except Exception as exc:
            failures.append(f"{name}: untyped {type(exc).__name__}: {exc}")
        else:
            failures.append(f"{name}: accepted, expected {expected.__name__}")
        if await snapshot(broker) != before:
            failures.append(f"{name}: the store changed")
    assert not failures, "\n".join(failures)
    # The broker still serves: the world is as built and works on.
    await broker.enqueue("q", b"after")
    got = await broker.receive(world.session, "q", max=10)
    assert sorted(d.body for d in got) == [b"after", b"ready"]
    await broker.ack(world.leased.id, world.leased.token)


async def test_bad_queue_arguments(broker: Broker) -> None:
    await check_cases(broker, QUEUE_CASES)


async def test_bad_messages_and_topics(broker: Broker) -> None:
    await check_cases(broker, ENQUEUE_CASES)


async def test_bad_receives_and_sessions(broker: Broker) -> None:
    await check_cases(broker, CONSUME_CASES)


async def test_bad_settles_dead_letters_and_results(broker: Broker) -> None:
    await check_cases(broker, SETTLE_CASES)


async def test_a_closed_broker_refuses_with_broker_closed(broker: Broker) -> None:
    await broker.create_queue("q")
    session = await broker.open_session("c")
    await broker.close()
    calls: list[Awaitable[Any]] = [
        broker.create_queue("r"),
        broker.enqueue("q", b"x"),
        broker.receive(session, "q"),
        broker.ack("0000000000000001", 1),
        broker.nack_many([Nack("0000000000000001", 1)]),
        broker.stats("q"),
        broker.queues(),
        broker.open_session("d"),
        broker.publish("t", b"x"),
        broker.sweep_once(),
    ]
    for call in calls:
        with pytest.raises(BrokerClosed) as caught:
            await call
        assert caught.value.code == "broker_closed"


# -- issue 13: bad inputs that used to be internal errors --------------------------------


class NoSession:
    async def session(self, capacity: int = 1) -> str:
        raise AssertionError("no case here needs a consumer session")


def op(name: Any, args: Any) -> Callable[[Broker, World], Awaitable[Any]]:
    """The operation as every front end calls it (HTTP, native, in-process)."""
    return lambda b, w: operations.call(b, name, args, NoSession())


def deep(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


OPERATION_CASES: list[Case] = [
    # Settings named like the operation's own parameters: unknown settings,
    # never a clash of keyword arguments (a TypeError).
    ("setting 'name'", op("configure_queue", {"queue": "q", "settings": {"name": "x"}}),
     InvalidArgument),
    ("setting 'self'", op("configure_queue", {"queue": "q", "settings": {"self": 1}}),
     InvalidArgument),
    ("setting 'exist_ok'", op("create_queue", {"queue": "n", "settings": {"exist_ok": False}}),
     InvalidArgument),
    ("setting 'queue'", op("create_queue", {"queue": "n", "settings": {"queue": "x"}}),
     InvalidArgument),
    ("setting 'name' in Python", lambda b, w: b.create_queue("n", name="x"), InvalidArgument),
    ("setting 'self' in Python", lambda b, w: b.configure_queue("q", self=1), InvalidArgument),
    ("settings not a map", op("create_queue", {"queue": "n", "settings": [1]}), InvalidArgument),
    ("setting value nested deep", op("configure_queue", {"queue": "q", "settings":
                                                          {"max_attempts": deep(900)}}),
     InvalidArgument),
    ("max_length past 64 bits", op("configure_queue", {"queue": "q", "settings":
                                                        {"max_length": 2**63}}),
     InvalidArgument),
    # Message ids and tokens past signed 64 bits: no store can hold them.
    ("result of an id past 63 bits", op("result", {"id": "ffffffffffffffff"}), InvalidArgument),
    ("ack of an id past 63 bits", op("ack", {"items": [{"id": "8000000000000000", "token": 1}]}),
     InvalidArgument),
    ("nack with a token past 63 bits",
     lambda b, w: b.nack(w.leased.id, 2**63), InvalidArgument),
    ("extend with a token of 2**64 - 1",
     op("extend", {"items": [{"id": "0" * 16, "token": 2**64 - 1, "seconds": 1}]}),
     InvalidArgument),
    ("dead letters after an id past 63 bits",
     op("dead_letters", {"queue": "q", "after": "f" * 16}), InvalidArgument),
    ("redrive of an id past 63 bits", op("redrive", {"queue": "q", "ids": ["9" * 16]}),
     InvalidArgument),
    ("an operation named by a deep list", op(deep(900), {}), UnknownOperation),
    ("an operation named by a huge string", op("x" * 1_000_000, {}), UnknownOperation),
]  # fmt: skip


async def test_bad_inputs_that_were_internal_errors(broker: Broker) -> None:
    await check_cases(broker, OPERATION_CASES)


async def test_an_unknown_setting_is_named_with_the_valid_ones(broker: Broker) -> None:
    await broker.create_queue("q")
    for name in ("name", "self", "exist_ok", "colour"):
        with pytest.raises(InvalidArgument) as caught:
            await operations.call(
                broker, "configure_queue", {"queue": "q", "settings": {name: 1}}, NoSession()
            )
        assert repr(name) in caught.value.message
        assert all(s in caught.value.message for s in QUEUE_SETTINGS), caught.value.message
    with pytest.raises(UnknownOperation) as unknown:
        await operations.call(broker, "x" * 1_000_000, {}, NoSession())
    assert len(unknown.value.message) < 200  # the name is shown cut short
