"""``conveyor worker --prefetch N`` (runtime.py, "Flow control"): the worker
holds up to N messages, runs at most ``--concurrency`` of them at once, keeps
the rest in a backlog whose leases it keeps, and gives the backlog back when
it stops."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from worker_harness import StartWorker, TasksModule, ids_with, read_events, wait_until

import conveyor

TASKS = """
app = conveyor.App(os.environ["CONVEYOR_URL"])


@app.task(queue="work")
def slow(seconds):
    record("start", time.time())
    time.sleep(seconds)
    record("done", time.time())
"""

pytestmark = pytest.mark.slow


def most_at_once(tmp_path: Path) -> int:
    """The most tasks that ran at the same time, from their start/done times."""
    edges = [
        (float(e.extra[0]), 1 if e.kind == "start" else -1)
        for e in read_events(tmp_path)
        if e.kind in ("start", "done")
    ]
    running = most = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):
        running += step
        most = max(most, running)
    return most


def test_a_worker_holds_its_prefetch_but_runs_only_its_concurrency(
    tasks_module: TasksModule,
    start_worker: StartWorker,
    client: conveyor.Client,
    tmp_path: Path,
) -> None:
    tasks = tasks_module(TASKS)
    start_worker(["work"], concurrency=2, prefetch=5)
    ids = [h.id for h in tasks.slow.delay_many([(0.4,)] * 12)]
    wait_until(lambda: client.stats("work").leased == 5, 10, "five messages leased")
    assert len(ids_with(read_events(tmp_path), "start")) <= 2
    wait_until(
        lambda: set(ids_with(read_events(tmp_path), "done")) >= set(ids), 30, "every task done"
    )
    assert most_at_once(tmp_path) == 2
    assert Counter(ids_with(read_events(tmp_path), "done")) == Counter(ids)


def test_a_stopping_worker_gives_its_backlog_back_at_once(
    tasks_module: TasksModule,
    start_worker: StartWorker,
    client: conveyor.Client,
    tmp_path: Path,
) -> None:
    tasks = tasks_module(TASKS)
    first = start_worker(["work"], concurrency=1, prefetch=4, grace=10)
    ids = [h.id for h in tasks.slow.delay_many([(2.0,)] * 4)]
    wait_until(lambda: client.stats("work").leased == 4, 10, "four messages leased")
    first.signal(signal.SIGTERM)
    # The running one keeps its lease; the three waiting are ready again at once.
    wait_until(lambda: client.stats("work").ready == 3, 1.5, "the backlog given back")
    # Given back unrun: not nacks, and their deliveries are not attempts.
    assert client.stats("work").nacked_total == 0
    assert first.wait(timeout=15) == 0, first.log()
    assert len(ids_with(read_events(tmp_path), "done")) == 1
    start_worker(["work"], concurrency=4)
    wait_until(
        lambda: set(ids_with(read_events(tmp_path), "done")) >= set(ids), 20, "every task done"
    )
    assert Counter(ids_with(read_events(tmp_path), "start")) == Counter(ids)


def test_a_backlogged_message_keeps_its_lease_while_it_waits(
    tasks_module: TasksModule,
    start_worker: StartWorker,
    client: conveyor.Client,
    tmp_path: Path,
) -> None:
    """Each task outlasts most of the lease, so the second waits in the
    backlog longer than a third of its lease: it is renewed as it starts and
    runs once, with no delivery lost or made twice."""
    tasks = tasks_module(TASKS)
    client.create_queue("work", visibility_timeout=2.0)
    worker = start_worker(["work"], concurrency=1, prefetch=2)
    ids = [h.id for h in tasks.slow.delay_many([(1.5,)] * 2)]
    wait_until(
        lambda: set(ids_with(read_events(tmp_path), "done")) >= set(ids), 20, "both tasks done"
    )
    wait_until(lambda: client.stats("work").acked_total == 2, 20, "both tasks acked")
    assert Counter(ids_with(read_events(tmp_path), "start")) == Counter(ids)
    stats = client.stats("work")
    assert stats.leased == 0 and stats.ready == 0
    assert "lease" not in worker.log()


def test_a_prefetch_below_the_concurrency_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "worker", "tasks_app:app",
         "--concurrency", "4", "--prefetch", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--prefetch is at least the concurrency" in done.stderr
