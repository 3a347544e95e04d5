"""The harness of the worker tests: a real broker process on a loopback
port, task apps written as modules in a test's directory, and real worker
processes (``python -m conveyor worker``) started with that directory as cwd.

Tasks report what they do by appending one line per event to
``events-<pid>.log`` next to the app module: ``<task id> <pid> <event>
[extra...]``, flushed at once. The test process reads them back with
``read_events``: a cheap record of which process ran what, in which order,
that survives the process being killed (a torn last line is ignored).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import conveyor

STARTUP_TIMEOUT = 20.0

# Prepended to every task module: ``record`` writes one event line.
PREAMBLE = '''\
import asyncio
import os
import time

import conveyor

HERE = os.path.dirname(os.path.abspath(__file__))


def record(event, *extra):
    """Append "<task id> <pid> <event> [extra...]" to this process's events file."""
    ctx = conveyor.current_task()
    fields = [ctx.id, str(os.getpid()), event, *map(str, extra)]
    with open(os.path.join(HERE, f"events-{os.getpid()}.log"), "a") as f:
        f.write(" ".join(fields) + "\\n")
        f.flush()

'''


@dataclass(frozen=True)
class Event:
    id: str
    pid: int
    kind: str
    extra: tuple[str, ...] = ()


def read_events(directory: Path) -> list[Event]:
    """Every complete event line under ``directory``, file by file, each file
    in the order its process wrote it."""
    events = []
    for path in sorted(directory.glob("events-*.log")):
        text = path.read_text()
        lines = text.split("\n")[:-1]  # the piece after the last newline is torn or empty
        for line in lines:
            id_, pid, kind, *extra = line.split(" ")
            events.append(Event(id_, int(pid), kind, tuple(extra)))
    return events


def ids_with(events: list[Event], kind: str, pid: int | None = None) -> list[str]:
    """Ids of the events of one kind (of one process), in file order."""
    return [e.id for e in events if e.kind == kind and (pid is None or e.pid == pid)]


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``predicate`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class BrokerProcess:
    """``conveyor serve`` in a subprocess; restartable on the same port and
    data. With ``store`` (a URL) it serves that store instead of an embedded
    one under ``directory``; ``extra`` are more ``serve`` arguments."""

    def __init__(
        self,
        directory: Path,
        *,
        store: str | None = None,
        extra: tuple[str, ...] = (),
        name: str = "broker",
    ) -> None:
        self.data = directory / "data"
        self.store = store
        self.extra = extra
        self.log_path = directory / f"{name}.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"conveyor://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        where = ["--store", self.store] if self.store else ["--data", str(self.data)]
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "conveyor", "serve", *where,
                "--port", str(self.port),
                "--http-port", "-1",
                "--log-level", "warning",
                *self.extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(self._accepting, STARTUP_TIMEOUT, "the broker to accept connections")

    def _accepting(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the broker exited: {self.log_path.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, nothing flushed that was not committed."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self._close_log()

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGTERM, 10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class WorkerProcess:
    """``conveyor worker`` in a subprocess (its own process group, so that
    cleanup reaches the process pool's children too)."""

    def __init__(
        self,
        directory: Path,
        url: str,
        app_path: str,
        *,
        concurrency: int,
        prefetch: int | None = None,
        pool: str,
        grace: float,
        queues: list[str] | None,
        index: int,
    ) -> None:
        self.log_path = directory / f"worker-{index}.log"
        self.queues = queues
        args = [
            sys.executable, "-m", "conveyor", "worker", app_path,
            "--concurrency", str(concurrency),
            "--pool", pool,
            "--grace", str(grace),
        ]  # fmt: skip
        if queues:
            args += ["--queues", ",".join(queues)]
        if prefetch is not None:
            args += ["--prefetch", str(prefetch)]
        env = {**os.environ, "CONVEYOR_URL": url, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                args, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, client: conveyor.Client, queues: list[str]) -> None:
        """Until the worker's consumer session is open on every queue."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}): {self.log()}")
            return any(
                s.name.endswith(f"-{self.pid}") and set(queues) <= set(s.queues)
                for s in client.sessions()
            )

        wait_until(ready, STARTUP_TIMEOUT, f"worker {self.pid} to consume {queues}", 0.05)
        # The session is listed before the worker has read the consume reply;
        # a delivery pushed in that window is dropped by the client (see
        # test_backlog.py). Give the reply time to land, so that only the
        # tests written for that race meet it.
        time.sleep(0.2)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        # While the worker lives its pid names its group (pool children
        # included); once it has exited the id is not ours to signal.
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(10)


TasksModule = Callable[[str], ModuleType]
StartWorker = Callable[..., WorkerProcess]
