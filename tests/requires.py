"""What a test needs from the machine: missing, it is skipped locally and
fails under CI=true, where everything the suite needs must be there (a test
that always skips in CI decides nothing)."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str, *, module_level: bool = False) -> NoReturn:
    """Skip for ``reason`` locally; fail under CI=true."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true requires it)", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def require_module(name: str) -> ModuleType:
    """Import ``name`` (at a test module's top), or skip the module locally."""
    try:
        return importlib.import_module(name)
    except ImportError:
        unavailable(
            f"{name} is not installed (pip install 'conveyor-queue[test]')", module_level=True
        )
