"""The exception tree: one root, a stable unique code per class, and each code
mapping back to the same class on the other side of the wire."""

from __future__ import annotations

import importlib
import json
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

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


# A fresh interpreter: the registry as core/errors.py alone makes it, then
# every module of the package imported and each ConveyorError subclass found.
FRESH_REGISTRY = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    from conveyor.core.errors import ConveyorError, error_codes
    known = {code: f"{cls.__module__}.{cls.__qualname__}" for code, cls in error_codes().items()}
    import conveyor
    for info in pkgutil.walk_packages(conveyor.__path__, "conveyor."):
        if not info.name.endswith(".__main__"):  # it runs the command line
            importlib.import_module(info.name)
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)
    found = {
        f"{c.__module__}.{c.__qualname__}": c.code
        for c in [ConveyorError, *subclasses(ConveyorError)]
        if c.__module__.split(".")[0] == "conveyor"
    }
    print(json.dumps({"known": known, "found": found}))
    """
)


def test_a_fresh_interpreter_knows_every_code_from_core_errors_alone() -> None:
    """The registry does not depend on what was imported: every ConveyorError
    of the package is declared in core/errors.py and registered there."""
    command = [sys.executable, "-c", FRESH_REGISTRY]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    known, found = seen["known"], seen["found"]
    assert {path for path in found if not path.startswith("conveyor.core.errors.")} == set()
    assert {code: path for path, code in found.items()} == known
    assert len(known) >= 22


@pytest.mark.parametrize(
    ("old_path", "name"),
    [
        ("conveyor.core.wire", "ProtocolError"),
        ("conveyor.core.wire", "FrameTooLarge"),
        ("conveyor.core.wire", "ReplyTooLarge"),
        ("conveyor.core.wire", "TooManyConnections"),
        ("conveyor.core.wire", "Unauthorized"),
        ("conveyor.core.wire", "UnknownOperation"),
        ("conveyor.client.connecting", "ConnectionLost"),
        ("conveyor.client.connecting", "BrokerUnreachable"),
        ("conveyor.client.native", "ConnectionLost"),
        ("conveyor.client.native", "BrokerUnreachable"),
        ("conveyor.worker.app", "TaskFailed"),
        ("conveyor", "TaskFailed"),
    ],
)
def test_the_old_import_paths_name_the_same_classes(old_path: str, name: str) -> None:
    module = importlib.import_module(old_path)
    assert getattr(module, name) is getattr(errors, name)


def test_every_error_declares_its_http_status() -> None:
    statuses = {code: cls.http_status for code, cls in error_codes().items()}
    assert all(400 <= status <= 599 for status in statuses.values()), statuses
    assert statuses["invalid_argument"] == 400
    assert statuses["body_too_large"] == 413
    assert statuses["queue_full"] == 429
    assert statuses["store_error"] == 500
    assert statuses["store_locked"] == 503


HTTP_TABLE_ROW = re.compile(r"^\| (\d{3}) \| (.*) \|$", re.MULTILINE)


def test_the_http_guide_lists_each_code_under_the_status_its_class_declares() -> None:
    """docs/http.md's table of statuses is the classes' ``http_status``."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "http.md").read_text()
    documented: dict[str, int] = {}
    for status, cell in HTTP_TABLE_ROW.findall(text):
        for code in re.findall(r"`([a-z_]+)`", cell):
            documented[code] = int(status)
    registry = error_codes()
    for code, status in documented.items():
        if code in registry:
            assert registry[code].http_status == status, code
    # Every error the API answers with a status of its own is in the table.
    special = {code for code, cls in registry.items() if cls.http_status != 500}
    assert special <= set(documented), special - set(documented)


def test_every_error_class_is_importable_from_conveyor() -> None:
    import conveyor

    for cls in error_codes().values():
        assert getattr(conveyor, cls.__name__) is cls, cls.__name__
        assert cls.__name__ in conveyor.__all__, cls.__name__
