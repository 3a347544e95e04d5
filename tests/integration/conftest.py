"""Fixtures of the integration tests: real ``conveyor serve`` processes on
free loopback ports (see integration_support.py).

``server``: one broker per test module (tests use queues of their own names,
``queue``), started with the module's ``SERVE_ARGS`` (more ``conveyor serve``
arguments, if it has them), checked at teardown to be still alive, then
stopped with SIGTERM and expected to exit 0. ``start_server``: a fresh broker of the test's own,
for tests that kill and restart it; every broker it started is stopped by
PID at teardown.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_support import Http, ServerProcess, StartServer


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    extra = getattr(request.module, "SERVE_ARGS", ())
    process = ServerProcess(tmp_path_factory.mktemp("server"), *extra)
    process.start()
    try:
        yield process
        assert process.alive(), f"the server died during the tests:\n{process.log_text()}"
    finally:
        code = process.stop()
    assert code == 0, f"conveyor serve exited with {code}:\n{process.log_text()}"
    assert "Traceback" not in process.log_text(), process.log_text()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Starts a broker of this test's own: ``start_server(*extra_serve_args)``."""
    started: list[ServerProcess] = []

    def start(*extra_args: str) -> ServerProcess:
        process = ServerProcess(tmp_path / f"server{len(started)}", *extra_args)
        started.append(process)
        process.start()
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()


@pytest.fixture
def http(server: ServerProcess) -> Http:
    return Http(server.http_url)


@pytest.fixture
def queue(request: pytest.FixtureRequest) -> str:
    """A queue name of this test's own (not created)."""
    base = re.sub(r"[^A-Za-z0-9_.:-]", "-", request.node.name)[:80]
    return f"{base}-{secrets.token_hex(3)}"
