"""The exception tree: one root, a stable unique code per class, and each code
mapping back to the same class on the other side of the wire."""

from __future__ import annotations

import pickle

import pytest

from conveyor.core import errors
from conveyor.core.errors import (
    BodyTooLarge,
    ConveyorError,
    InvalidArgument,
    error_codes,
    error_for_code,
    register_error,
)


def _all_subclasses(cls: type[ConveyorError]) -> set[type[ConveyorError]]:
    found = {cls}
    for sub in cls.__subclasses__():
        found |= _all_subclasses(sub)
    return found


CORE_ERRORS = sorted(
    (c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, ConveyorError)),
    key=lambda c: c.__name__,
)


def test_the_core_defines_the_expected_errors() -> None:
    names = {c.__name__ for c in CORE_ERRORS}
    assert {
        "ConveyorError",
        "InvalidArgument",
        "BodyTooLarge",
        "QueueNotFound",
        "QueueExists",
        "QueueFull",
        "LeaseLost",
        "SessionNotFound",
        "MessageNotFound",
        "ResultTimeout",
        "StoreLocked",
        "StoreError",
        "BrokerClosed",
    } <= names


@pytest.mark.parametrize("cls", CORE_ERRORS, ids=lambda c: c.__name__)
def test_every_code_maps_back_to_its_class(cls: type[ConveyorError]) -> None:
    error = error_for_code(cls.code, "it went wrong")
    assert type(error) is cls
    assert error.message == "it went wrong"
    assert str(error) == "it went wrong"
    assert error_codes()[cls.code] is cls


@pytest.mark.parametrize("cls", CORE_ERRORS, ids=lambda c: c.__name__)
def test_every_error_has_a_code_and_a_default_message(cls: type[ConveyorError]) -> None:
    assert isinstance(cls.code, str)
    assert cls.code
    assert cls.code == cls.code.lower()
    assert " " not in cls.code
    error = cls()
    assert error.message
    assert error.message == (cls.__doc__ or cls.code)


def test_codes_are_unique() -> None:
    classes = _all_subclasses(ConveyorError)
    codes = [c.code for c in classes if "code" in vars(c)]
    assert len(codes) == len(set(codes))
    # No class silently inherits its parent's code (it would decode as the parent).
    assert all("code" in vars(c) for c in classes if c.__module__ == errors.__name__)


def test_registry_holds_every_core_error_and_only_errors() -> None:
    registry = error_codes()
    assert set(CORE_ERRORS) <= set(registry.values())
    for code, cls in registry.items():
        assert issubclass(cls, ConveyorError)
        assert cls.code == code


def test_error_codes_is_a_copy() -> None:
    error_codes()["bogus"] = ConveyorError
    assert "bogus" not in error_codes()


def test_unknown_code_becomes_the_root_error() -> None:
    error = error_for_code("no_such_code", "from the future")
    assert type(error) is ConveyorError
    assert error.message == "from the future"


def test_every_error_derives_from_the_root() -> None:
    assert all(issubclass(c, ConveyorError) and issubclass(c, Exception) for c in CORE_ERRORS)
    assert issubclass(BodyTooLarge, InvalidArgument)


def test_register_error_adds_an_upper_layer_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors, "_BY_CODE", dict(errors._BY_CODE))

    class RateLimited(ConveyorError):
        """The server refuses more requests for now."""

        code = "rate_limited"

    assert register_error(RateLimited) is RateLimited
    assert type(error_for_code("rate_limited", "x")) is RateLimited


def test_register_error_refuses_a_duplicate_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors, "_BY_CODE", dict(errors._BY_CODE))

    class Impostor(ConveyorError):
        code = "queue_full"

    with pytest.raises(RuntimeError, match="queue_full"):
        register_error(Impostor)
    assert error_codes()["queue_full"] is errors.QueueFull


@pytest.mark.parametrize("cls", CORE_ERRORS, ids=lambda c: c.__name__)
def test_errors_survive_pickling(cls: type[ConveyorError]) -> None:
    """Errors cross process boundaries (worker pools) as they are."""
    error = cls("detail")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert copy.message == "detail"
