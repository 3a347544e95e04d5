"""The public API is typed: no ``Any`` in a signature of AsyncClient,
Client, their Delivery, App, Task or TaskHandle, properties included. The
one ``Any`` is what ``Delivery.json()`` returns: a JSON document is any
value."""

from __future__ import annotations

import inspect
import typing

import pytest

import conveyor
from conveyor.client import aio, sync
from conveyor.worker.app import TaskHandle

PUBLIC = [aio.AsyncClient, sync.Client, aio.Delivery, sync.Delivery, conveyor.App, conveyor.Task]
PUBLIC.append(TaskHandle)
HONEST_ANY = {("Delivery", "json")}


def has_any(hint: object) -> bool:
    if hint is typing.Any:
        return True
    return any(has_any(arg) for arg in typing.get_args(hint))


def members(cls: type) -> list[tuple[str, object]]:
    found = []
    for name, member in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(member, property):
            found.append((name, member.fget))
        elif inspect.isfunction(member):
            found.append((name, member))
    return found


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda cls: f"{cls.__module__}.{cls.__name__}")
def test_no_any_in_a_public_signature(cls: type) -> None:
    checked = 0
    for name, function in members(cls):
        hints = typing.get_type_hints(function)
        assert "return" in hints or name == "__init__", f"{cls.__name__}.{name}: untyped"
        for part, hint in hints.items():
            if (cls.__name__, name) in HONEST_ANY and part == "return":
                continue
            assert not has_any(hint), f"{cls.__name__}.{name}: {part} is {hint}"
        checked += 1
    assert checked >= 3  # the test looked at something


def test_delivery_attributes_have_their_types() -> None:
    hints = {name: typing.get_type_hints(f)["return"] for name, f in members(sync.Delivery)}
    assert hints["id"] is str and hints["body"] is bytes and hints["token"] is int
    assert hints["headers"] == dict[str, str] and hints["group"] == str | None
    assert hints["deadline"] is float and hints["attempts"] is int
