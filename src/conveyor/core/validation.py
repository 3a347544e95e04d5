"""Checks of every argument that comes from a user, with the error each gets.

The broker runs them before anything is written, so a bad argument changes
nothing and the connection that sent it stays usable.
"""

from __future__ import annotations

import math
import re
from typing import Any

from conveyor.core.errors import BodyTooLarge, InvalidArgument
from conveyor.core.types import QUEUE_SETTINGS, NewMessage, QueueConfig

QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,199}")
MAX_PRIORITY = 9
MAX_KEY_LENGTH = 255
MAX_HEADERS_BYTES = 64 * 1024


def queue_name(name: object) -> str:
    if not isinstance(name, str) or not QUEUE_NAME.fullmatch(name):
        raise InvalidArgument(
            f"bad queue name {name!r}: 1 to 200 characters of letters, digits, '_', '.', ':'"
            " or '-', starting with a letter or digit"
        )
    return name


def _number(name: str, value: object, *, minimum: float, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{name} must be a number, not {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        raise InvalidArgument(f"{name} must be finite, not {value!r}")
    if v < minimum or (not allow_zero and v == 0):
        bound = f"greater than {minimum:g}" if not allow_zero else f"at least {minimum:g}"
        raise InvalidArgument(f"{name} must be {bound}, not {value!r}")
    return v


def _integer(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an integer, not {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        top = f" and at most {maximum}" if maximum is not None else ""
        raise InvalidArgument(f"{name} must be at least {minimum}{top}, not {value}")
    return value


def _storable(text: str) -> bool:
    """Whether every store can keep ``text`` as it is: UTF-8 without NUL
    (PostgreSQL's text holds no NUL; a lone surrogate has no UTF-8 form)."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def key(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_KEY_LENGTH:
        raise InvalidArgument(f"{name} must be a string of 1 to {MAX_KEY_LENGTH} characters")
    if not _storable(value):
        raise InvalidArgument(f"{name} must be UTF-8 text without NUL characters")
    return value


def priority(value: object) -> int:
    return _integer("priority", value, minimum=0, maximum=MAX_PRIORITY)


def seconds(name: str, value: object, *, positive: bool = False) -> float:
    return _number(name, value, minimum=0.0, allow_zero=not positive)


def limit(name: str, value: object, *, maximum: int) -> int:
    return _integer(name, value, minimum=1, maximum=maximum)


def message(msg: NewMessage, max_body: int) -> None:
    """Raise the typed error of the first bad field of ``msg``."""
    if not isinstance(msg.body, bytes | bytearray | memoryview):
        raise InvalidArgument(f"body must be bytes, not {type(msg.body).__name__}")
    if len(msg.body) > max_body:
        raise BodyTooLarge(f"body of {len(msg.body)} bytes exceeds the limit of {max_body}")
    priority(msg.priority)
    if msg.delay is not None:
        seconds("delay", msg.delay)
    if msg.ttl is not None:
        seconds("ttl", msg.ttl, positive=True)
    if msg.dedup_key is not None:
        key("dedup_key", msg.dedup_key)
    if msg.group is not None:
        key("group", msg.group)
    if msg.max_attempts is not None:
        _integer("max_attempts", msg.max_attempts, minimum=1, maximum=1_000_000)
    if msg.headers is not None:
        headers(msg.headers)


def headers(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidArgument("headers must be a mapping of strings to strings")
    size = 0
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k:
            raise InvalidArgument("headers must be a mapping of non-empty strings to strings")
        if not (_storable(k) and _storable(v)):
            raise InvalidArgument("headers must be UTF-8 text without NUL characters")
        size += len(k) + len(v)
    if size > MAX_HEADERS_BYTES:
        raise InvalidArgument(f"headers exceed {MAX_HEADERS_BYTES} characters")
    return value


def queue_config(
    name: str, settings: dict[str, Any], base: QueueConfig | None = None
) -> QueueConfig:
    """A QueueConfig from user settings, every value checked."""
    unknown = set(settings) - set(QUEUE_SETTINGS)
    if unknown:
        raise InvalidArgument(
            f"unknown queue setting(s) {sorted(unknown)}; known: {', '.join(QUEUE_SETTINGS)}"
        )
    checked: dict[str, Any] = {}
    for key, value in settings.items():
        if key in ("visibility_timeout", "dedup_window", "result_ttl", "retry_max"):
            checked[key] = seconds(key, value, positive=key != "dedup_window")
        elif key == "retry_base":
            checked[key] = seconds(key, value)
        elif key == "retry_jitter":
            checked[key] = _number(key, value, minimum=0.0)
            if checked[key] > 1:
                raise InvalidArgument(f"retry_jitter must be between 0 and 1, not {value}")
        elif key == "max_attempts":
            checked[key] = _integer(key, value, minimum=1, maximum=1_000_000)
        elif key == "max_length":
            checked[key] = None if value is None else _integer(key, value, minimum=1)
        elif key == "buckets":
            checked[key] = _integer(key, value, minimum=1, maximum=4096)
    if base is None:
        return QueueConfig(name=queue_name(name), **checked)
    fields = {f: getattr(base, f) for f in (*QUEUE_SETTINGS, "name", "created_at")}
    fields.update(checked)
    return QueueConfig(**fields)
