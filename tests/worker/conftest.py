"""Fixtures for the worker tests (the processes they start are described in
worker_harness.py): ``broker``, ``client``, ``tasks_module``, ``start_worker``.

The broker's session timeout is a minute (SESSION_TIMEOUT): a worker's
leases that come back within a test's wait came back because its connection
dropped, never because its session timed out.
"""

from __future__ import annotations

import importlib.util
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from worker_harness import PREAMBLE, BrokerProcess, StartWorker, TasksModule, WorkerProcess

import conveyor

SESSION_TIMEOUT = 60.0


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BrokerProcess]:
    """A broker on a free loopback port, its data under tmp_path; the test
    process's CONVEYOR_URL points at it."""
    process = BrokerProcess(tmp_path, extra=("--session-timeout", str(SESSION_TIMEOUT)))
    process.start()
    monkeypatch.setenv("CONVEYOR_URL", process.url)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def client(broker: BrokerProcess) -> Iterator[conveyor.Client]:
    """An admin client for the test: sessions, stats, dead letters."""
    with conveyor.Client(broker.url, name="test-admin") as c:
        yield c


@pytest.fixture
def tasks_module(tmp_path: Path, broker: BrokerProcess) -> Iterator[TasksModule]:
    """Writes ``tmp_path/tasks_app.py`` (the preamble, then ``source``, which
    defines ``app``) and imports it here under the same name the worker uses,
    so that task names match; not kept in sys.modules."""
    apps: list[conveyor.App] = []

    def load(source: str) -> ModuleType:
        path = tmp_path / "tasks_app.py"
        path.write_text(PREAMBLE + textwrap.dedent(source))
        spec = importlib.util.spec_from_file_location("tasks_app", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        apps.append(module.app)
        return module

    try:
        yield load
    finally:
        for app in apps:
            app.close()


@pytest.fixture
def start_worker(
    tmp_path: Path, broker: BrokerProcess, client: conveyor.Client
) -> Iterator[StartWorker]:
    """Starts ``conveyor worker tasks_app:app`` and, unless ``wait=False``,
    waits until it consumes its queues. Every worker is killed at teardown."""
    started: list[WorkerProcess] = []

    def start(
        queues: list[str],
        *,
        concurrency: int = 2,
        prefetch: int | None = None,
        pool: str = "threads",
        grace: float = 5.0,
        app_path: str = "tasks_app:app",
        wait: bool = True,
    ) -> WorkerProcess:
        worker = WorkerProcess(
            tmp_path,
            broker.url,
            app_path,
            concurrency=concurrency,
            prefetch=prefetch,
            pool=pool,
            grace=grace,
            queues=queues,
            index=len(started),
        )
        started.append(worker)
        if wait:
            worker.wait_ready(client, queues)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.cleanup()
