"""How a task records its completion: the same for every system.

Every benchmark task is a no-op that appends one line to a Redis list named
by the payload's ``k``: ``"<i> <enqueued_at> <started_at> <finished_at>"``
(wall-clock seconds). That is one RPUSH round trip per task, on a Redis of the
suite's own (``redis-server`` on a free port, nothing on disk), so it costs
every system the same and is not shared with the brokers' Redis. The harness
counts completions with LLEN and reads the lines at the end: duplicates,
losses, the first start, the last completion and enqueue-to-start latency all
come from them.

The payload is a JSON object: ``{"k": list key, "i": sequence number,
"ts": enqueue time, "data": a string of the workload's size}``, plus
``"sleep"`` (seconds) for W4's 20 ms tasks. ``ts`` is taken just before the
enqueue call.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECORDER_ENV = "BENCH_RECORDER"
_clients: dict[int, Any] = {}


def _client() -> Any:
    # One client per process id: Celery's prefork children and RQ's work
    # horses are forks, and a socket must not be shared across a fork.
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        import redis

        client = redis.Redis.from_url(os.environ[RECORDER_ENV])
        _clients.clear()
        _clients[pid] = client
    return client


def payload(key: str, i: int, size: int, sleep: float = 0.0) -> dict[str, Any]:
    body: dict[str, Any] = {"k": key, "i": i, "ts": time.time(), "data": "x" * size}
    if sleep:
        body["sleep"] = sleep
    return body


def _line(body: dict[str, Any], started: float) -> str:
    return f"{body['i']} {body['ts']!r} {started!r} {time.time()!r}"


def record(body: dict[str, Any]) -> None:
    """The body of every synchronous benchmark task."""
    started = time.time()
    if body.get("sleep"):
        time.sleep(body["sleep"])
    _client().rpush(body["k"], _line(body, started))


async def arecord(body: dict[str, Any]) -> None:
    """The body of every asynchronous benchmark task. The record itself is the
    same blocking RPUSH as in ``record`` so that it costs the same."""
    started = time.time()
    if body.get("sleep"):
        await asyncio.sleep(body["sleep"])
    _client().rpush(body["k"], _line(body, started))


@dataclass(frozen=True)
class Completion:
    i: int
    enqueued: float
    started: float
    finished: float


class Recorder:
    """The harness side: a private redis-server, and reading what tasks wrote."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        import redis

        from bench.runner.processes import free_port, wait_for_port

        server = shutil.which("redis-server")
        if server is None:
            # No binary of our own: a high database number of the local Redis.
            self.url = "redis://127.0.0.1:6379/15"
        else:
            port = free_port()
            args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", str(self.work)]  # fmt: skip
            self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
            wait_for_port(port, 10.0)
            self.url = f"redis://127.0.0.1:{port}/0"
        self.redis = redis.Redis.from_url(self.url)
        self.redis.ping()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def count(self, key: str) -> int:
        return int(self.redis.llen(key))

    def sent(self, key: str) -> int:
        value = self.redis.get(f"{key}:sent")
        return int(value) if value else 0

    def read(self, key: str) -> list[Completion]:
        lines = self.redis.lrange(key, 0, -1)
        out = []
        for line in lines:
            i, enqueued, started, finished = line.split()
            out.append(Completion(int(i), float(enqueued), float(started), float(finished)))
        return out

    def forget(self, key: str) -> None:
        self.redis.delete(key, f"{key}:sent")
