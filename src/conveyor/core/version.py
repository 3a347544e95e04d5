"""Conveyor's version, as installed.

pyproject.toml is the one place the version is written; this reads it from
the installed distribution's metadata. A source tree that was never
installed (``pip install -e .`` installs it) says ``0+unknown``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "conveyor-queue"

try:
    VERSION = version(DISTRIBUTION)
except PackageNotFoundError:
    VERSION = "0+unknown"
