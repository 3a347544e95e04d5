"""Every refusal of a bad argument says what was refused: the class and code
are for programs, the message for the person who reads it, and it names
the argument (and the bound, where there is one) in the words of the API."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from conveyor.core import validation
from conveyor.core.errors import InvalidArgument
from conveyor.core.ids import parse_id
from conveyor.core.topics import validate_pattern, validate_topic
from conveyor.core.types import NewMessage

BIG_HEADERS = {"k": "v" * validation.MAX_HEADERS_BYTES}

CASES: list[tuple[str, Callable[[], Any], list[str]]] = [
    (
        "queue name",
        lambda: validation.queue_name("a b"),
        ["bad queue name 'a b'", "letters", "starting with a letter or digit"],
    ),
    ("message id", lambda: parse_id("xyz"), ["bad message id 'xyz'", "16 hexadecimal"]),
    ("priority", lambda: validation.priority(10), ["priority", "at most 9", "10"]),
    ("priority type", lambda: validation.priority("1"), ["priority must be an integer"]),
    ("seconds", lambda: validation.seconds("delay", -1), ["delay must be at least 0"]),
    ("positive", lambda: validation.seconds("ttl", 0, positive=True), ["ttl", "greater than 0"]),
    ("finite", lambda: validation.seconds("wait", math.inf), ["wait must be finite"]),
    ("number type", lambda: validation.seconds("wait", "1"), ["wait must be a number, not str"]),
    ("limit", lambda: validation.limit("max", 0, maximum=5), ["max must be at least 1", "5"]),
    ("key", lambda: validation.key("dedup_key", ""), ["dedup_key", "1 to 255"]),
    ("key text", lambda: validation.key("group", "a\x00"), ["group must be UTF-8 text"]),
    ("headers type", lambda: validation.headers([]), ["headers must be a mapping"]),
    ("header key", lambda: validation.headers({"": "v"}), ["headers", "non-empty strings"]),
    ("header text", lambda: validation.headers({"a": "\x00"}), ["headers must be UTF-8 text"]),
    ("headers size", lambda: validation.headers(BIG_HEADERS), ["headers exceed 65536"]),
    (
        "body type",
        lambda: validation.message(NewMessage(body="x"), 10),  # type: ignore[arg-type]
        ["body must be bytes, not str"],
    ),
    (
        "body size",
        lambda: validation.message(NewMessage(body=b"x" * 11), 10),
        ["body of 11 bytes", "limit of 10"],
    ),
    *[
        (
            f"message {field}",
            (lambda f=field, v=value: validation.message(NewMessage(body=b"", **{f: v}), 10)),
            [f"{field} must be"],
        )
        for field, value in (
            ("priority", 10),
            ("delay", -1),
            ("ttl", 0),
            ("dedup_key", ""),
            ("group", "a\x00"),
            ("max_attempts", 0),
        )
    ],
    *[
        (
            f"setting {name}",
            (lambda n=name, v=value: validation.queue_config("q", {n: v})),
            [f"{name} must be"],
        )
        for name, value in (
            ("visibility_timeout", 0),
            ("dedup_window", -1),
            ("retry_base", -1),
            ("retry_jitter", -1),
            ("max_attempts", 0),
            ("buckets", 5000),
        )
    ],
    (
        "no upper bound",
        lambda: validation.queue_config("q", {"max_length": 0}),
        ["max_length must be at least 1", "not 0"],
    ),
    ("upper bound", lambda: validation.priority(-1), ["priority must be at least 0 and at most 9"]),
    (
        "unknown setting",
        lambda: validation.queue_config("q", {"colour": 1}),
        ["unknown queue setting", "colour", "the settings are visibility_timeout, max_attempts"],
    ),
    (
        "jitter",
        lambda: validation.queue_config("q", {"retry_jitter": 2}),
        ["retry_jitter must be between 0 and 1"],
    ),
    ("buckets", lambda: validation.queue_config("q", {"buckets": 0}), ["buckets", "at least 1"]),
    ("topic", lambda: validate_topic(""), ["a topic is 1 to 255 characters"]),
    ("topic words", lambda: validate_topic("a..b"), ["bad topic 'a..b'", "separated by"]),
    ("pattern", lambda: validate_pattern(""), ["a topic pattern is 1 to 255 characters"]),
    ("pattern words", lambda: validate_pattern("a b"), ["bad topic pattern 'a b'", "'#'"]),
]


@pytest.mark.parametrize(("call", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_message_names_what_was_refused(call: Callable[[], Any], words: list[str]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        call()
    for word in words:
        assert word in caught.value.message, (word, caught.value.message)
