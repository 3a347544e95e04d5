"""Topic patterns as in AMQP topic exchanges: ``*`` is exactly one word,
``#`` zero or more words, anything else matches itself."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.core.errors import InvalidArgument
from conveyor.core.topics import topic_matches, validate_pattern, validate_topic

CASES = [
    # pattern, topic, matches
    ("orders.eu.paid", "orders.eu.paid", True),
    ("orders.eu.paid", "orders.eu.paid.late", False),
    ("orders.eu.paid", "orders.eu", False),
    ("orders.eu.paid", "orders.us.paid", False),
    ("*", "orders", True),
    ("*", "orders.eu", False),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    ("*.*", "a.b.c", False),
    ("orders.*", "orders.eu", True),
    ("orders.*", "orders", False),
    ("orders.*", "orders.eu.paid", False),
    ("*.paid", "orders.paid", True),
    ("*.paid", "paid", False),
    ("#", "a", True),
    ("#", "a.b.c.d", True),
    ("#.#", "a", True),
    ("#.#", "a.b.c", True),
    ("orders.#", "orders", True),
    ("orders.#", "orders.eu", True),
    ("orders.#", "orders.eu.paid", True),
    ("orders.#", "order", False),
    ("orders.#", "shop.orders", False),
    ("#.paid", "paid", True),
    ("#.paid", "orders.paid", True),
    ("#.paid", "orders.eu.paid", True),
    ("#.paid", "orders.paid.late", False),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.b", True),
    ("a.#.b", "a.x.y.z.b", True),
    ("a.#.b", "a.b.b", True),
    ("a.#.b", "a", False),
    ("a.#.b", "b", False),
    ("a.#.b", "a.b.c", False),
    ("a.#.b", "x.a.b", False),
    ("a.*.#", "a", False),
    ("a.*.#", "a.x", True),
    ("a.*.#", "a.x.y", True),
    ("a.*.#", "a.x.y.z", True),
    ("a.*.#", "b.x", False),
    ("#.*", "a", True),
    ("#.*", "a.b", True),
    ("*.#.*", "a", False),
    ("*.#.*", "a.b", True),
    ("*.#.*", "a.b.c.d", True),
    ("#.a.#", "a", True),
    ("#.a.#", "x.a.y", True),
    ("#.a.#", "x.y", False),
    ("#.a.#.b", "x.a.y.a.z.b", True),
    ("#.a.#.b", "x.a.y.a.z.b.c", False),
    ("a.#.b.#.c", "a.b.c", True),
    ("a.#.b.#.c", "a.c.b.c.c", True),
    ("a.#.b.#.c", "a.c.c", False),
    ("a.#.#.b", "a.b", True),
    ("a.#.#.b", "a.x.y.b", True),
    # '*' and '#' are only wildcards as whole words.
    ("a*", "ab", False),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), CASES)
def test_topic_matches(pattern: str, topic: str, expected: bool) -> None:
    assert topic_matches(pattern, topic) is expected


def _reference(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    @functools.cache
    def match(p: int, w: int) -> bool:
        if p == len(pattern):
            return w == len(words)
        head = pattern[p]
        if head == "#":
            return any(match(p + 1, k) for k in range(w, len(words) + 1))
        if w == len(words):
            return False
        return (head in ("*", words[w])) and match(p + 1, w + 1)

    return match(0, 0)


WORDS = st.sampled_from(["a", "b", "c"])


@given(
    pattern=st.lists(st.one_of(WORDS, st.sampled_from(["*", "#"])), min_size=1, max_size=6),
    topic=st.lists(WORDS, min_size=1, max_size=7),
)
def test_topic_matches_agrees_with_a_reference_matcher(
    pattern: list[str], topic: list[str]
) -> None:
    assert topic_matches(".".join(pattern), ".".join(topic)) is _reference(
        tuple(pattern), tuple(topic)
    )


@pytest.mark.parametrize(
    "topic", ["a", "orders.eu.paid", "A-b_c:d.9", "x" * 255, ".".join(["w"] * 128)]
)
def test_good_topics_pass(topic: str) -> None:
    assert validate_topic(topic) == topic


@pytest.mark.parametrize(
    "topic",
    [
        "",
        ".",
        "a.",
        ".a",
        "a..b",
        "a b",
        "a/b",
        "a.*",
        "#",
        "a.#",
        "*",
        "é",
        "x" * 256,
        "a\n",
        "a.b\n",
        "\na",
        None,
        1,
        b"orders",
        ["a"],
    ],
)
def test_bad_topics_raise_invalid_argument(topic: object) -> None:
    with pytest.raises(InvalidArgument):
        validate_topic(topic)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "pattern", ["#", "*", "a.*.#", "a.#.b", "#.#", "orders.eu.paid", "p" * 255]
)
def test_good_patterns_pass(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        ".",
        "a.",
        ".#",
        "a..b",
        "**",
        "##",
        "a*",
        "*a",
        "a#",
        "a.b c",
        "p" * 256,
        "a\n",
        "#\n",
        None,
        3,
        b"#",
    ],
)
def test_bad_patterns_raise_invalid_argument(pattern: object) -> None:
    with pytest.raises(InvalidArgument):
        validate_pattern(pattern)  # type: ignore[arg-type]


def test_invalid_argument_message_names_the_culprit() -> None:
    with pytest.raises(InvalidArgument, match=r"a\.\.b"):
        validate_topic("a..b")
    with pytest.raises(InvalidArgument, match=r"a\.b c"):
        validate_pattern("a.b c")
