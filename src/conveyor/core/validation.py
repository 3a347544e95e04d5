"""Checks of every argument that comes from a user, with the error each gets.

The broker runs them before anything is written, so a bad argument changes
nothing and the connection that sent it stays usable.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Mapping
from typing import Any, NamedTuple

from conveyor.core.errors import BodyTooLarge, InvalidArgument
from conveyor.core.types import QUEUE_SETTINGS, NewMessage, QueueConfig

QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,199}")
MAX_PRIORITY = 9
MAX_KEY_LENGTH = 255
MAX_HEADERS_BYTES = 64 * 1024
MAX_INT64 = 2**63 - 1  # what every store and the native protocol can carry


class _ShortRepr(reprlib.Repr):
    """User values in error messages: short, never recursing deep, and an
    integer too long for repr() shown by its size."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = self.maxother = 60

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:
            return f"<an integer of {x.bit_length()} bits>"
        return repr(x)


short_repr = _ShortRepr().repr


def queue_name(name: object) -> str:
    if not isinstance(name, str) or not QUEUE_NAME.fullmatch(name):
        raise InvalidArgument(
            f"bad queue name {short_repr(name)}: 1 to 200 characters of letters, digits,"
            " '_', '.', ':' or '-', starting with a letter or digit"
        )
    return name


def _number(name: str, value: object, *, minimum: float, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{name} must be a number, not {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        raise InvalidArgument(f"{name} must be finite, not {short_repr(value)}")
    if v < minimum or (not allow_zero and v == 0):
        bound = f"greater than {minimum:g}" if not allow_zero else f"at least {minimum:g}"
        raise InvalidArgument(f"{name} must be {bound}, not {short_repr(value)}")
    return v


def _integer(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an integer, not {short_repr(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        top = f" and at most {maximum}" if maximum is not None else ""
        raise InvalidArgument(f"{name} must be at least {minimum}{top}, not {short_repr(value)}")
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


class SettingRule(NamedTuple):
    """What one queue setting accepts (the OpenAPI document shows the same)."""

    integer: bool  # an integer; else any finite number
    minimum: float
    maximum: float | None = None
    exclusive_minimum: bool = False  # greater than minimum, not equal
    nullable: bool = False  # None: no limit


SETTING_RULES: dict[str, SettingRule] = {
    "visibility_timeout": SettingRule(False, 0, exclusive_minimum=True),
    "max_attempts": SettingRule(True, 1, 1_000_000),
    "max_length": SettingRule(True, 1, MAX_INT64, nullable=True),
    "dedup_window": SettingRule(False, 0),
    "retry_base": SettingRule(False, 0),
    "retry_max": SettingRule(False, 0, exclusive_minimum=True),
    "retry_jitter": SettingRule(False, 0, 1),
    "buckets": SettingRule(True, 1, 4096),
    "result_ttl": SettingRule(False, 0, exclusive_minimum=True),
}
assert tuple(SETTING_RULES) == QUEUE_SETTINGS


def queue_settings(settings: object) -> dict[str, Any]:
    """``settings`` as a mapping of known setting names, values unchecked.

    Every front end runs this before settings become keyword arguments, so a
    setting named like a parameter (``name``, ``exist_ok``, ``self``) is an
    unknown setting, never a clash of arguments."""
    if not isinstance(settings, Mapping):
        raise InvalidArgument(
            f"settings are a mapping of names to values, not {short_repr(settings)}"
        )
    unknown = [k for k in settings if k not in SETTING_RULES]
    if unknown:
        names = ", ".join(short_repr(k) for k in unknown)
        raise InvalidArgument(
            f"unknown queue setting(s) {names}; the settings are {', '.join(QUEUE_SETTINGS)}"
        )
    return dict(settings)


def setting(name: str, value: object) -> Any:
    """One queue setting's value, checked by its rule."""
    rule = SETTING_RULES[name]
    if value is None and rule.nullable:
        return None
    if rule.integer:
        return _integer(name, value, minimum=int(rule.minimum), maximum=_int(rule.maximum))
    number = _number(name, value, minimum=rule.minimum, allow_zero=not rule.exclusive_minimum)
    if rule.maximum is not None and number > rule.maximum:
        raise InvalidArgument(
            f"{name} must be between {rule.minimum:g} and {rule.maximum:g}, not {short_repr(value)}"
        )
    return number


def _int(bound: float | None) -> int | None:
    return None if bound is None else int(bound)


def queue_config(
    name: str, settings: Mapping[str, Any], base: QueueConfig | None = None
) -> QueueConfig:
    """A QueueConfig from user settings, every value checked."""
    checked = {key: setting(key, value) for key, value in queue_settings(settings).items()}
    if base is None:
        return QueueConfig(name=queue_name(name), **checked)
    fields = {f: getattr(base, f) for f in (*QUEUE_SETTINGS, "name", "created_at")}
    fields.update(checked)
    return QueueConfig(**fields)
