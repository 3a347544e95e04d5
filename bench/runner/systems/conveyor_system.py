"""Conveyor: a real ``conveyor serve`` (SQLite store, durability fsync, HTTP
on a free port for /metrics) and real ``conveyor worker`` processes (thread
pool, --concurrency 8 --prefetch 16). The producer uses the SDK: ``task.delay``
(W1) and ``task.delay_many`` (W1b), each returning once the broker committed.

The worker imports this module as ``bench.runner.systems.conveyor_system:app``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

import conveyor
from bench.runner.processes import cpu_seconds, free_port, spawn, stop, wait_for_port
from bench.runner.recorder import record
from bench.runner.systems.base import QUEUE_ENV, Producer, System

URL_ENV = "CONVEYOR_URL"
TASK = "bench.task"

app = conveyor.App(os.environ.get(URL_ENV))


@app.task(name=TASK, queue=os.environ.get(QUEUE_ENV, "bench"))
def bench_task(body: dict[str, Any]) -> None:
    record(body)


class ConveyorProducer(Producer):
    def enqueue(self, body: dict[str, Any]) -> None:
        bench_task.delay(body)

    def enqueue_many(self, bodies: list[dict[str, Any]]) -> None:
        bench_task.delay_many([(body,) for body in bodies])

    def close(self) -> None:
        app.close()


_METRICS = (
    "conveyor_store_commits_total",
    "conveyor_store_commit_operations_total",
    "conveyor_store_commit_seconds_total",
    "conveyor_store_fsyncs_total",
    "conveyor_store_fsync_seconds_total",
)


class ConveyorSystem(System):
    name = "conveyor"
    distribution = "conveyor-queue"
    pool = "threads"
    concurrency = 8
    prefetch = 16  # twice the concurrency, as Dramatiq's default (2 x its threads)
    bulk = "task.delay_many (one atomic enqueue_many per 100)"
    settings: ClassVar[dict[str, str]] = {
        "server": "conveyor serve --durability fsync (SQLite, group commit, one WAL fdatasync"
        " per group)",
        "worker": "conveyor worker --pool threads --concurrency 8 --prefetch 16 (8 running,"
        " up to 8 more waiting in the worker, their leases kept)",
        "acknowledgement": "after the task returns; lease renewed while it runs",
    }
    redelivery = (
        "a killed worker's connection drops, its session closes and its leases are"
        " released at once (a silent one: after the 10 s session timeout)"
    )

    def __init__(self) -> None:
        super().__init__()
        self.server: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.http_port = 0

    def start(self, work: Path) -> None:
        super().start(work)
        port, self.http_port = free_port(), free_port()
        args = [_conveyor(), "serve", "--data", str(work / "conveyor-data"),
                "--port", str(port), "--http-port", str(self.http_port),
                "--durability", "fsync", "--log-level", "warning"]  # fmt: skip
        self.server = spawn(args, {}, work / "logs" / "conveyor-serve.log")
        wait_for_port(port, 30.0, self.server)
        wait_for_port(self.http_port, 30.0, self.server)
        self.url = f"conveyor://127.0.0.1:{port}"
        self.durability = "fsync: every reply after an fdatasync of the SQLite WAL (one per group)"
        self.server_version = "conveyor serve (same package)"

    def stop(self) -> None:
        if self.server is not None:
            stop([self.server], grace=15.0)
            self.server = None

    def env(self, queue: str) -> dict[str, str]:
        return {**super().env(queue), URL_ENV: self.url}

    def worker_args(self, queue: str) -> list[str]:
        return [_conveyor(), "worker", f"{__name__}:app", "--url", self.url,
                "--pool", self.pool, "--concurrency", str(self.concurrency),
                "--prefetch", str(self.prefetch), "--log-level", "warning"]  # fmt: skip

    def producer(self) -> Producer:
        return ConveyorProducer()

    def cleanup(self, queue: str) -> None:
        from conveyor.client.sync import Client

        with Client(self.url, name="bench-cleanup") as client:
            client.delete_queue(queue)

    def probe(self) -> dict[str, float]:
        assert self.server is not None
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        values = {"cpu_seconds": cpu_seconds(self.server.pid)}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in _METRICS:
                values[name] = float(value)
        return values

    def probe_delta(
        self, before: dict[str, float], after: dict[str, float], messages: int, seconds: float
    ) -> dict[str, float]:
        commits = after.get(_METRICS[0], 0) - before.get(_METRICS[0], 0)
        operations = after.get(_METRICS[1], 0) - before.get(_METRICS[1], 0)
        commit_time = after.get(_METRICS[2], 0) - before.get(_METRICS[2], 0)
        fsyncs = after.get(_METRICS[3], 0) - before.get(_METRICS[3], 0)
        fsync_time = after.get(_METRICS[4], 0) - before.get(_METRICS[4], 0)
        cpu = after["cpu_seconds"] - before["cpu_seconds"]
        return {
            "commits": commits,
            "commits_per_s": commits / seconds if seconds > 0 else 0.0,
            "operations_per_commit": operations / commits if commits else 0.0,
            "commit_ms": 1000 * commit_time / commits if commits else 0.0,
            "fsyncs_per_s": fsyncs / seconds if seconds > 0 else 0.0,
            "messages_per_fsync": messages / fsyncs if fsyncs else 0.0,
            "fsync_ms": 1000 * fsync_time / fsyncs if fsyncs else 0.0,
            "broker_cpu_s": cpu,
            "broker_cpu_us_per_message": 1e6 * cpu / messages if messages else 0.0,
        }


def _conveyor() -> str:
    found = shutil.which("conveyor") or str(Path(sys.executable).parent / "conveyor")
    return found if Path(found).exists() else "conveyor"
