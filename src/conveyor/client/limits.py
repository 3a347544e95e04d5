"""Requests checked against the limits the broker announced in its hello
reply (``max_body``, ``max_batch``, ``max_frame``), before they are sent.

A request over a limit would be refused anyway: a body or a batch by the
broker with the same typed error, a frame by the broker's frame reader,
which cannot tell which request it was and hangs up. Checked here, the call
fails at once with an error that names the limit, nothing is sent, and the
connection and every other call on it carry on. The protocol's one client
side (connection.py), under both transports, runs these checks; they cost
a length comparison per message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conveyor.core.errors import BodyTooLarge, InvalidArgument

# Operations whose ``items`` are a batch of settles.
SETTLES = frozenset({"ack", "nack", "extend", "dead"})


def check_request(op: str, args: Mapping[str, Any], limits: Mapping[str, Any]) -> None:
    """Raise BodyTooLarge or InvalidArgument for a request over a limit."""
    max_body = limits.get("max_body")
    max_batch = limits.get("max_batch")
    if op == "enqueue":
        messages = args["messages"]
        _batch(len(messages), max_batch, "messages")
        if max_body is not None:
            for message in messages:
                _body(len(message.body), max_body, "body")
    elif op == "publish":
        if max_body is not None:
            _body(len(args["message"].body), max_body, "body")
    elif op in SETTLES:
        items = args["items"]
        _batch(len(items), max_batch, "items")
        if op == "ack" and max_body is not None:
            for item in items:
                if item.get("result") is not None:
                    _body(len(item["result"]), max_body, "result")


def check_frame(op: str, size: int, limits: Mapping[str, Any]) -> None:
    """InvalidArgument for an encoded request (``size`` bytes after its
    length prefix) longer than the broker reads."""
    max_frame = limits.get("max_frame")
    if max_frame is not None and size > max_frame:
        raise InvalidArgument(
            f"{op}: a request of {size} bytes exceeds the broker's frame limit of"
            f" {max_frame} bytes (max_frame); nothing was sent: send smaller batches"
        )


def _body(size: int, max_body: int, what: str) -> None:
    if size > max_body:
        raise BodyTooLarge(
            f"{what} of {size} bytes exceeds the broker's limit of {max_body} bytes"
            " (max_body); nothing was sent"
        )


def _batch(count: int, max_batch: int | None, what: str) -> None:
    if max_batch is not None and count > max_batch:
        raise InvalidArgument(
            f"a batch of {count} {what} exceeds the broker's limit of {max_batch}"
            " (max_batch); nothing was sent: send smaller batches"
        )
