"""Fuzzing the native protocol of a real ``conveyor serve`` over real
sockets, with hypothesis strategies for frames: well-formed requests of
every operation with arguments of every type (plausible and not), wrong
kinds and arities, huge integers, nesting around the depth limit, random
bytes after a valid hello and garbage before the preamble.

Every example must get typed errors only: never an ``internal error`` nor
the catch-all code ``error``; a connection is closed only for what breaks
the framing (a frame nested too deep, bytes that are no frame); the server
logs no traceback and no ERROR line, and still serves a normal client.

Bounds: each test runs at most ``EXAMPLES`` examples with no per-example
deadline (this machine is shared); every socket read has a timeout, so a
test ends in well under a minute.
"""

from __future__ import annotations

import re
import socket
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from integration_support import RawConnection, ServerProcess

import conveyor
from conveyor.broker import operations
from conveyor.core import wire
from conveyor.core.types import QUEUE_SETTINGS
from conveyor.server.connection import MAX_HELLO_FRAME

EXAMPLES = 200
QUEUE = "fuzz-native"
SENTINEL_RID = 2**31
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what MessagePack carries
ATOMS = (
    st.none()
    | st.booleans()
    | INT64
    | st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)])
    | st.floats()
    | st.text(max_size=30)
    | st.binary(max_size=40)
)
VALUES = st.recursive(
    ATOMS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)


def nested(depth: int) -> Any:
    """A list ``depth`` levels deep."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def mostly(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Four times in five a plausible value, else anything."""
    return st.integers(0, 4).flatmap(lambda i: plausible if i else VALUES)


# Around the limit: the request frame adds two levels (the frame, the args map).
DEEP = st.integers(wire.MAX_DEPTH - 6, wire.MAX_DEPTH + 30).map(nested)
NAMES = st.sampled_from([QUEUE, QUEUE, QUEUE, "fuzz-other", "", "no such", "x" * 300, "é"])
IDS = st.sampled_from(["0" * 16, "f" * 16, "0123456789abcdef", "zz", ""]) | st.text(max_size=20)
SMALL_FLOATS = st.floats(-1, 100) | st.sampled_from([0.0, float("inf"), float("nan"), 1e308])

MESSAGE = st.fixed_dictionaries(
    {"body": mostly(st.binary(max_size=64))},
    optional={
        "priority": mostly(st.integers(-2, 12)),
        "delay": mostly(SMALL_FLOATS),
        "ttl": mostly(SMALL_FLOATS),
        "dedup_key": mostly(st.text(max_size=300)),
        "group": mostly(st.text(max_size=10)),
        "headers": mostly(st.dictionaries(st.text(max_size=8), st.text(max_size=8))),
        "max_attempts": mostly(INT64),
        "bogus": VALUES,
    },
)
ITEM = st.fixed_dictionaries(
    {"id": IDS, "token": mostly(st.integers(0, 5) | INT64)},
    optional={
        "result": mostly(st.binary(max_size=20) | st.none()),
        "delay": mostly(SMALL_FLOATS | st.none()),
        "error": mostly(st.text(max_size=10) | st.none()),
        "seconds": mostly(SMALL_FLOATS),
        "reason": mostly(st.text(max_size=10)),
    },
)
# Setting names include the operations' own parameter names, on purpose.
SETTING_NAMES = [*QUEUE_SETTINGS, "name", "self", "exist_ok", "settings", "queue", "b", "a"]
SETTINGS = st.dictionaries(
    st.integers(0, 4).flatmap(lambda i: st.sampled_from(SETTING_NAMES) if i else st.text()),
    mostly(SMALL_FLOATS | INT64 | st.none()),
    min_size=1,
    max_size=4,
)
# Plausible values for each argument name the operations take.
ARGUMENTS: dict[str, st.SearchStrategy[Any]] = {
    "queue": mostly(NAMES),
    "topic": mostly(st.sampled_from(["fuzz.a", "fuzz.#", "x", ""])),
    "pattern": mostly(st.sampled_from(["fuzz.#", "a.*", "#", ""])),
    "settings": mostly(SETTINGS),
    "exist_ok": mostly(st.booleans()),
    "messages": mostly(st.lists(MESSAGE, max_size=4)),
    "message": mostly(MESSAGE),
    "idempotency_key": mostly(st.text(max_size=10)),
    "max": mostly(st.integers(-1, 2000) | INT64),
    "wait": mostly(st.sampled_from([0, 0.0, 0.01, -1, 61, float("inf"), float("nan")])),
    "visibility": mostly(SMALL_FLOATS | st.none()),
    "items": mostly(st.lists(ITEM, max_size=4)),
    "limit": mostly(st.integers(-1, 20_000) | INT64),
    "after": mostly(IDS | st.none()),
    "ids": mostly(st.lists(IDS, max_size=3) | st.none()),
    "id": mostly(IDS),
    "timeout": mostly(st.sampled_from([0, 0.0, 0.01, -1, float("nan"), float("inf")])),
    "prefetch": mostly(st.integers(-1, 20_000) | INT64),
    "sub": mostly(st.integers(-1, 5) | INT64),
    "version": mostly(st.just(wire.VERSION)),
}
OPS = [*operations.OPERATIONS, "consume", "cancel", "hello"]
FIELDS = {name: list(op.args.__struct_fields__) for name, op in operations.OPERATIONS.items()}
FIELDS |= {"consume": ["queue", "prefetch", "sub"], "cancel": ["sub"], "hello": ["version"]}


@st.composite
def request_args(draw: st.DrawFn, op: str) -> Any:
    """The op's own arguments (some left out, one sometimes extra), or anything."""
    if draw(st.integers(0, 14)) == 0:
        return draw(VALUES | DEEP)
    fields = FIELDS.get(op, [])
    args = {f: draw(ARGUMENTS.get(f, VALUES)) for f in fields if draw(st.integers(0, 7))}
    if draw(st.integers(0, 7)) == 0:
        args[draw(st.text(max_size=10))] = draw(VALUES | DEEP)
    return args


def deep_frame(levels: int) -> bytes:
    """A request frame whose argument is a list ``levels`` deep, written as
    bytes (the encoder itself would refuse to go that deep)."""
    payload = b"\x94\x00\x01\xa6queues" + b"\x91" * (levels - 1) + b"\x90"  # [0, 1, "queues", [[...
    return struct.pack(">I", len(payload)) + payload


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, int]:
    """A frame on the wire, and how deep it nests: mostly requests, some of
    any shape, some far deeper than the limit."""
    shape = draw(st.integers(0, 19))
    if shape <= 14:
        op = draw(st.sampled_from(OPS)) if shape <= 12 else draw(VALUES)
        rid = draw(st.integers(1, 2**31 - 1) | INT64)
        frame = [wire.REQUEST, rid, op, draw(request_args(op if isinstance(op, str) else ""))]
    elif shape <= 16:  # a kind that is not a request, or a request of the wrong arity
        frame = [draw(st.integers(-3, 9) | INT64), *draw(st.lists(VALUES, max_size=5))]
    elif shape == 17:
        frame = [wire.HEARTBEAT, *draw(st.lists(VALUES, max_size=2))]
    elif shape == 18:
        frame = [wire.REQUEST, 1, "queues", draw(DEEP)]
    else:
        levels = draw(st.integers(wire.MAX_DEPTH, 20_000))
        return deep_frame(levels), 1 + levels
    return wire.encode(frame), depth(frame)


def depth(value: Any) -> int:
    if isinstance(value, list | tuple):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


def internal_errors(frames_read: list[Any]) -> list[Any]:
    return [
        f
        for f in frames_read
        if f[0] in (wire.ERROR, wire.SUB_END)
        and (f[-2] == "error" or "internal error" in str(f[-1]))
    ]


def assert_log_clean(server: ServerProcess) -> None:
    log = server.log_text()
    assert "Traceback" not in log, log[-5000:]
    assert not re.search(r" ERROR ", log), log[-5000:]


def assert_still_serving(server: ServerProcess) -> None:
    assert server.alive(), server.log_text()[-5000:]
    with conveyor.Client(server.url, timeout=10) as client:
        client.create_queue("after-fuzz")
        sent = client.enqueue("after-fuzz", b"still here")
        (got,) = client.receive("after-fuzz", wait=2)
        assert got.id == sent.id and got.body == b"still here"
        got.ack()


@pytest.fixture(scope="module")
def fuzzed(server: ServerProcess) -> ServerProcess:
    with conveyor.Client(server.url, timeout=10) as client:
        client.create_queue(QUEUE)
        client.enqueue_many(QUEUE, [b"m%d" % i for i in range(50)])
        client.bind("fuzz.#", QUEUE)
    return server


def exchange(port: int, batch: list[bytes]) -> list[Any]:
    """Hello, the frames, then a sentinel request; the frames read until its
    reply (or until the server closed the connection)."""
    with RawConnection(port, timeout=15) as conn:
        conn.hello("fuzzer")
        conn.send(b"".join(batch))
        conn.send(wire.request(SENTINEL_RID, "queues", {}))
        got: list[Any] = []
        while True:
            try:
                frame = conn.read_frame()
            except ConnectionResetError:
                return [*got, None]
            if frame is None:
                return [*got, None]  # closed
            got.append(frame)
            if frame[0] in (wire.REPLY, wire.ERROR) and frame[1] == SENTINEL_RID:
                return got


@FUZZ
@given(batch=st.lists(frames(), min_size=1, max_size=4))
def test_fuzzed_frames_get_typed_errors(
    fuzzed: ServerProcess, batch: list[tuple[bytes, int]]
) -> None:
    got = exchange(fuzzed.port, [data for data, _ in batch])
    assert not internal_errors([f for f in got if f is not None]), got
    too_deep = any(levels > wire.MAX_DEPTH for _, levels in batch)
    if got[-1] is None:  # closed: only for a frame that breaks the framing
        assert too_deep, (batch, got)
        assert any(f and f[0] == wire.ERROR and f[2] == "protocol_error" for f in got), got
    else:
        assert got[-1][0] == wire.REPLY, got[-1]


def test_fuzzed_frames_leave_the_server_clean(fuzzed: ServerProcess) -> None:
    """Runs after the fuzzing above, on the same server."""
    assert_log_clean(fuzzed)
    assert_still_serving(fuzzed)


@FUZZ
@given(noise=st.binary(min_size=1, max_size=300), after_hello=st.booleans())
def test_random_bytes_get_a_protocol_error_or_a_close(
    fuzzed: ServerProcess, noise: bytes, after_hello: bool
) -> None:
    with RawConnection(fuzzed.port, timeout=15) as conn:
        if after_hello:
            conn.hello("noise")
        elif wire.PREAMBLE.startswith(noise[: len(wire.PREAMBLE)]):
            noise = b"X" + noise  # garbage before the preamble, not a valid start
        try:
            conn.send(noise)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server hung up already
            return
        got = conn.read_to_eof(timeout=15)
    assert not internal_errors(got), got
    codes = {f[2] for f in got if f[0] == wire.ERROR}
    assert codes <= {"protocol_error", "frame_too_large", "unknown_operation",
                     "invalid_argument", "unauthorized"}, got  # fmt: skip
    if not after_hello:
        assert codes == {"protocol_error"}, got


@FUZZ
@given(length=st.integers(0, 2**32 - 1), tail=st.binary(max_size=20))
def test_any_length_prefix_is_handled(fuzzed: ServerProcess, length: int, tail: bytes) -> None:
    with RawConnection(fuzzed.port, timeout=15) as conn:
        conn.hello("lengths")
        try:
            conn.send(struct.pack(">I", length) + tail)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        got = conn.read_to_eof(timeout=15)
    assert not internal_errors(got), got


def test_the_server_is_clean_after_all_fuzzing(fuzzed: ServerProcess) -> None:
    assert_log_clean(fuzzed)
    assert_still_serving(fuzzed)


# -- regression tests of what the fuzzing found or issue 13 named ------------------------


def test_settings_named_like_parameters_get_invalid_argument(fuzzed: ServerProcess) -> None:
    with RawConnection(fuzzed.port) as conn:
        conn.hello()
        for op, settings in (
            ("configure_queue", {"name": "x"}),
            ("configure_queue", {"self": 1}),
            ("create_queue", {"exist_ok": False}),
        ):
            reply = conn.call(op, {"queue": QUEUE, "settings": settings})
            assert reply[0] == wire.ERROR and reply[2] == "invalid_argument", reply
            assert repr(next(iter(settings))) in reply[3] and "max_attempts" in reply[3]
        assert isinstance(conn.call("queues", {}), list)
    assert_log_clean(fuzzed)


@pytest.mark.parametrize("levels", [wire.MAX_DEPTH + 1, 1_000, 100_000])
@pytest.mark.parametrize("hello", [True, False], ids=["after-hello", "before-hello"])
def test_a_frame_nested_past_the_limit_gets_a_protocol_error(
    fuzzed: ServerProcess, levels: int, hello: bool
) -> None:
    with RawConnection(fuzzed.port) as conn:
        if hello:
            conn.hello()
            # A frame at the limit is read: [0, rid, "queues", args] is 1 + args deep.
            assert conn.call("queues", nested(wire.MAX_DEPTH - 1))[2] == "invalid_argument"
        else:
            conn.send(wire.PREAMBLE)
        frame = deep_frame(levels - 1)
        conn.send(frame)
        got = conn.read_to_eof()
    codes = [f[2] for f in got if f[0] == wire.ERROR]
    if not hello and len(frame) - 4 > MAX_HELLO_FRAME:
        # Before hello a frame this long is refused by its length alone,
        # unread: nothing recurses over it either.
        assert codes == ["frame_too_large"], got
        return
    assert codes == ["protocol_error"], got
    assert f"deeper than {wire.MAX_DEPTH}" in got[-1][3]
    assert_log_clean(fuzzed)


def test_ids_and_tokens_past_63_bits_get_invalid_argument(fuzzed: ServerProcess) -> None:
    """Found by the fuzzer: an id of 16 hex digits above 7fff... or a token
    of 2**63 reached SQLite, which cannot hold it (an OverflowError)."""
    with RawConnection(fuzzed.port) as conn:
        conn.hello()
        conn.call("create_queue", {"queue": QUEUE})  # the fuzzing may have deleted it
        for op, args in (
            ("result", {"id": "ffffffffffffffff"}),
            ("dead_letters", {"queue": QUEUE, "after": "8000000000000000"}),
            ("redrive", {"queue": QUEUE, "ids": ["f" * 16]}),
            ("ack", {"items": [{"id": "0" * 16, "token": 2**63}]}),
            ("nack", {"items": [{"id": "f" * 16, "token": 1}]}),
        ):
            reply = conn.call(op, args)
            assert reply[0] == wire.ERROR and reply[2] == "invalid_argument", (op, reply)
    assert_log_clean(fuzzed)
