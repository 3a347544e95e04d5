"""Topic patterns, in the manner of AMQP topic exchanges.

A topic is dot-separated words (``orders.eu.paid``). In a binding pattern,
``*`` matches exactly one word and ``#`` matches zero or more words; any other
word matches itself.
"""

from __future__ import annotations

import functools
import re

from conveyor.core.errors import InvalidArgument

_WORD = re.compile(r"[A-Za-z0-9_\-:]+")


def validate_topic(topic: str) -> str:
    if not isinstance(topic, str) or not topic or len(topic) > 255:
        raise InvalidArgument("a topic is 1 to 255 characters")
    for word in topic.split("."):
        if not _WORD.fullmatch(word):
            raise InvalidArgument(
                f"bad topic {topic!r}: words are letters, digits, '_', '-' or ':',"
                " separated by single dots"
            )
    return topic


def validate_pattern(pattern: str) -> str:
    if not isinstance(pattern, str) or not pattern or len(pattern) > 255:
        raise InvalidArgument("a topic pattern is 1 to 255 characters")
    for word in pattern.split("."):
        if word not in ("*", "#") and not _WORD.fullmatch(word):
            raise InvalidArgument(
                f"bad topic pattern {pattern!r}: words are names, '*' (one word) or '#'"
                " (zero or more words), separated by single dots"
            )
    return pattern


@functools.lru_cache(maxsize=4096)
def _compile(pattern: str) -> tuple[str, ...]:
    return tuple(pattern.split("."))


def topic_matches(pattern: str, topic: str) -> bool:
    return _match(_compile(pattern), tuple(topic.split(".")))


def _match(pat: tuple[str, ...], words: tuple[str, ...]) -> bool:
    # Iterative matcher with backtracking over the last '#', like glob '*'.
    p = w = 0
    star_p = star_w = -1
    while w < len(words):
        if p < len(pat) and pat[p] == "#":
            star_p, star_w = p, w
            p += 1
        elif p < len(pat) and (pat[p] == "*" or pat[p] == words[w]):
            p += 1
            w += 1
        elif star_p >= 0:
            star_w += 1
            w = star_w
            p = star_p + 1
        else:
            return False
    while p < len(pat) and pat[p] == "#":
        p += 1
    return p == len(pat)
