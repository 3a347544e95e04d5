"""Argument checks: every bad input gets InvalidArgument (an oversized body
BodyTooLarge, itself an InvalidArgument); every good one passes unchanged."""

from __future__ import annotations

import math
from typing import Any

import pytest

from conveyor.core import validation
from conveyor.core.errors import BodyTooLarge, InvalidArgument
from conveyor.core.types import NewMessage, QueueConfig

MAX_BODY = 1024

# -- queue names ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["q", "Q", "0", "orders", "orders.eu-1:paid_x", "a" * 200, "9-lives"]
)
def test_good_queue_names(name: str) -> None:
    assert validation.queue_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-a",
        ".a",
        "_a",
        ":a",
        "a b",
        "a/b",
        "a*",
        "a#",
        "é",
        "a" * 201,
        "a\n",  # re '$' also matches before a trailing newline
        "a\x00",
        None,
        1,
        b"q",
        ["q"],
    ],
)
def test_bad_queue_names(name: object) -> None:
    with pytest.raises(InvalidArgument):
        validation.queue_name(name)


# -- numbers --------------------------------------------------------------------


@pytest.mark.parametrize("value", list(range(10)))
def test_good_priorities(value: int) -> None:
    assert validation.priority(value) == value


@pytest.mark.parametrize("value", [-1, 10, 100, 1.0, 5.5, True, False, "1", None, math.nan])
def test_bad_priorities(value: object) -> None:
    with pytest.raises(InvalidArgument):
        validation.priority(value)


@pytest.mark.parametrize("value", [0, 0.0, 0.001, 1, 2.5, 86400, 1e9])
def test_good_seconds(value: float) -> None:
    assert validation.seconds("delay", value) == float(value)


@pytest.mark.parametrize(
    "value", [-1, -0.001, math.nan, math.inf, -math.inf, True, "1", None, [1], 1j]
)
def test_bad_seconds(value: object) -> None:
    with pytest.raises(InvalidArgument, match="delay"):
        validation.seconds("delay", value)


@pytest.mark.parametrize("value", [0, 0.0])
def test_positive_seconds_refuse_zero(value: float) -> None:
    with pytest.raises(InvalidArgument):
        validation.seconds("ttl", value, positive=True)
    assert validation.seconds("ttl", 0.5, positive=True) == 0.5


@pytest.mark.parametrize("value", [1, 50, 100])
def test_good_limits(value: int) -> None:
    assert validation.limit("max", value, maximum=100) == value


@pytest.mark.parametrize("value", [0, -1, 101, 1.0, True, "5", None])
def test_bad_limits(value: object) -> None:
    with pytest.raises(InvalidArgument, match="max"):
        validation.limit("max", value, maximum=100)


# -- headers --------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"a": ""}, {"trace-id": "abc", "x": "y"}, {"k": "v" * (validation.MAX_HEADERS_BYTES - 1)}],
)
def test_good_headers(headers: dict[str, str]) -> None:
    assert validation.headers(headers) == headers


@pytest.mark.parametrize(
    "headers",
    [
        None,
        [("a", "b")],
        "a=b",
        {"": "v"},
        {1: "v"},
        {"a": 1},
        {"a": None},
        {"a": b"b"},
        {"k": "v" * validation.MAX_HEADERS_BYTES},
        {f"k{i}": "v" * 1000 for i in range(70)},
        {"a": "b\x00c"},
        {"\x00": "v"},
        {"a": "\ud800"},
    ],
)
def test_bad_headers(headers: object) -> None:
    with pytest.raises(InvalidArgument):
        validation.headers(headers)


# -- messages -------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"body": b""},
        {"body": b"x" * MAX_BODY},
        {"body": bytearray(b"abc")},
        {"body": memoryview(b"abc")},
        {"priority": 9},
        {"delay": 0},
        {"delay": 3.5},
        {"ttl": 0.01},
        {"dedup_key": "k"},
        {"dedup_key": "k" * validation.MAX_KEY_LENGTH},
        {"group": "customer-1"},
        {"group": "g" * validation.MAX_KEY_LENGTH},
        {"headers": {"a": "b"}},
        {"headers": {}},
        {"max_attempts": 1},
        {"max_attempts": 1_000_000},
    ],
)
def test_good_messages(fields: dict[str, Any]) -> None:
    validation.message(NewMessage(**{"body": b"hello", **fields}), MAX_BODY)


@pytest.mark.parametrize(
    "fields",
    [
        {"body": "text"},
        {"body": None},
        {"body": 12},
        {"body": [1, 2]},
        {"priority": -1},
        {"priority": 10},
        {"priority": 1.5},
        {"priority": True},
        {"delay": -1},
        {"delay": math.nan},
        {"delay": math.inf},
        {"delay": "5"},
        {"ttl": 0},
        {"ttl": -5},
        {"ttl": math.nan},
        {"dedup_key": ""},
        {"dedup_key": "k" * (validation.MAX_KEY_LENGTH + 1)},
        {"dedup_key": 5},
        {"group": ""},
        {"group": "g" * (validation.MAX_KEY_LENGTH + 1)},
        {"group": 7},
        {"max_attempts": 0},
        {"max_attempts": -3},
        {"max_attempts": 1_000_001},
        {"max_attempts": 2.0},
        {"max_attempts": True},
        {"headers": {"a": 1}},
        {"headers": {"": "x"}},
        {"headers": "a=b"},
    ],
)
def test_bad_messages(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument) as info:
        validation.message(NewMessage(**{"body": b"hello", **fields}), MAX_BODY)
    assert type(info.value) is InvalidArgument


def test_oversized_body_is_body_too_large() -> None:
    with pytest.raises(BodyTooLarge) as info:
        validation.message(NewMessage(body=b"x" * (MAX_BODY + 1)), MAX_BODY)
    assert isinstance(info.value, InvalidArgument)
    assert str(MAX_BODY) in info.value.message


def test_oversized_body_is_reported_before_other_faults() -> None:
    with pytest.raises(BodyTooLarge):
        validation.message(NewMessage(body=b"x" * (MAX_BODY + 1), priority=99), MAX_BODY)


# -- queue settings -------------------------------------------------------------


def test_queue_config_defaults() -> None:
    config = validation.queue_config("jobs", {})
    assert config == QueueConfig(name="jobs")


def test_queue_config_takes_every_setting() -> None:
    settings = {
        "visibility_timeout": 12.5,
        "max_attempts": 7,
        "max_length": 1000,
        "dedup_window": 0,
        "retry_base": 0,
        "retry_max": 60,
        "retry_jitter": 1,
        "buckets": 4096,
        "result_ttl": 5,
    }
    config = validation.queue_config("jobs", settings)
    for key, value in settings.items():
        assert getattr(config, key) == value, key
    assert validation.queue_config("jobs", {"max_length": None}).max_length is None
    assert validation.queue_config("jobs", {"buckets": 1}).buckets == 1


@pytest.mark.parametrize(
    "settings",
    [
        {"nonsense": 1},
        {"visibility_timeout": 0},
        {"visibility_timeout": -1},
        {"visibility_timeout": math.nan},
        {"visibility_timeout": "30"},
        {"max_attempts": 0},
        {"max_attempts": 1.5},
        {"max_attempts": 1_000_001},
        {"max_length": 0},
        {"max_length": -1},
        {"max_length": 10.0},
        {"dedup_window": -1},
        {"retry_base": -0.1},
        {"retry_max": 0},
        {"retry_jitter": -0.1},
        {"retry_jitter": 1.01},
        {"retry_jitter": math.inf},
        {"buckets": 0},
        {"buckets": 4097},
        {"buckets": True},
        {"result_ttl": 0},
        {"result_ttl": math.inf},
        {"created_at": 5.0},
        {"name": "other"},
    ],
)
def test_bad_queue_settings(settings: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        validation.queue_config("jobs", settings)


def test_queue_config_checks_the_name() -> None:
    with pytest.raises(InvalidArgument):
        validation.queue_config("bad name", {})


def test_queue_config_over_a_base_keeps_everything_else() -> None:
    base = QueueConfig(name="jobs", visibility_timeout=9.0, max_attempts=2, created_at=123.0)
    config = validation.queue_config("jobs", {"max_attempts": 4}, base=base)
    assert config.max_attempts == 4
    assert config.visibility_timeout == 9.0
    assert config.created_at == 123.0
    assert config.name == "jobs"


def test_queue_config_over_a_base_still_checks_values() -> None:
    with pytest.raises(InvalidArgument):
        validation.queue_config("jobs", {"buckets": 0}, base=QueueConfig(name="jobs"))
