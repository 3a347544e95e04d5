"""The version is written once, in pyproject.toml: the package, the CLI and
the OpenAPI document read it from the installed distribution."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import conveyor
from conveyor.core.version import DISTRIBUTION, VERSION
from conveyor.server.openapi import openapi_document

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_is_pyprojects() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION
    assert VERSION == project["version"] == importlib.metadata.version(DISTRIBUTION)
    assert conveyor.__version__ == VERSION
    assert openapi_document()["info"]["version"] == VERSION


def test_no_module_writes_the_version_again() -> None:
    written = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "src").rglob("*.py")
        if f'"{VERSION}"' in path.read_text() or f"'{VERSION}'" in path.read_text()
    ]
    assert written == []
