"""The layers of docs/architecture.md: imports point downward only.

Read from the source (every ``import`` of every module, late ones inside
functions included), and checked in a fresh interpreter for what importing
a layer loads: a lower layer never loads an upper one or an optional
dependency it does not need.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# What each layer may import besides itself. The client may run a Broker in
# its own process (client/embedded.py); the root package is the SDK's face.
ALLOWED = {
    "core": set(),
    "store": {"core"},
    "broker": {"core", "store"},
    "server": {"core", "store", "broker"},
    "client": {"core", "store", "broker"},
    "worker": {"core", "client"},
    "demo": {"core", "client", "worker"},
    "cli": {"core", "store", "broker", "server", "client", "worker", "demo"},
    "conveyor": {"core", "client", "worker"},
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "conveyor"
    return "cli" if parts[1] in ("cli", "cli_commands", "__main__") else parts[1]


def imports_by_module() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((SRC / "conveyor").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[module] = names
    return found


def test_every_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for module, names in imports_by_module().items():
        own = layer_of(module)
        for name in names:
            if name == "conveyor" or name.startswith("conveyor."):
                other = layer_of(name)
                if other != own and other not in ALLOWED[own]:
                    wrong.append(f"{module} imports {name}")
    assert wrong == []


@pytest.mark.parametrize(
    ("dependency", "where"),
    [
        ("rich", "conveyor.demo."),  # the demo extra
        ("aiohttp", "conveyor.server."),  # the server extra
        ("asyncpg", "conveyor.store.postgres."),  # the postgres extra
    ],
)
def test_an_optional_dependency_is_imported_only_where_it_is_needed(
    dependency: str, where: str
) -> None:
    users = [
        module
        for module, names in imports_by_module().items()
        if any(n == dependency or n.startswith(f"{dependency}.") for n in names)
    ]
    assert users
    assert [m for m in users if not m.startswith(where)] == []


LOADED = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by(module: str) -> set[str]:
    command = [sys.executable, "-c", LOADED, module]
    done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=60)
    return set(json.loads(done.stdout))


def under(modules: set[str], *prefixes: str) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(f"{p}.") for p in prefixes))


def test_importing_the_store_loads_no_broker_server_demo_or_optional_dependency() -> None:
    loaded = loaded_by("conveyor.store.base")
    assert under(loaded, "conveyor.broker", "conveyor.server", "conveyor.demo") == []
    # The package root loads the SDK only when one of its names is used.
    assert under(loaded, "conveyor.client", "conveyor.worker") == []
    assert under(loaded, "aiohttp", "asyncpg", "rich") == []


def test_importing_the_sdk_loads_no_broker_store_server_or_demo() -> None:
    """A producer's ``import conveyor`` loads the client and the worker API,
    nothing of the service."""
    loaded = loaded_by("conveyor")
    assert under(loaded, "conveyor.broker", "conveyor.store", "conveyor.server") == []
    assert under(loaded, "conveyor.demo", "aiohttp", "asyncpg", "rich", "sqlite3") == []


def test_every_public_name_of_the_package_root_resolves() -> None:
    import conveyor

    for name in conveyor.__all__:
        assert getattr(conveyor, name) is not None, name
    assert conveyor.App.__module__ == "conveyor.worker.app"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = conveyor.Nope  # type: ignore[attr-defined]
