"""Tasks near the body limit through a real worker (issue 13, part 2):
twenty tasks of ~1 MiB each pushed to ``conveyor worker --concurrency 20``.
Before replies were bounded in bytes they made one 20 MiB push, the worker's
connection failed on it, and the worker never ran anything again; now the
pushes are cut to fit the frame limit and every task runs once, its ~1 MiB
result read back."""

from __future__ import annotations

from pathlib import Path

from worker_harness import StartWorker, TasksModule, ids_with, read_events

import conveyor

TASKS = """
app = conveyor.App(os.environ["CONVEYOR_URL"])


@app.task(queue="big", max_attempts=1)
def mirror(n, text):
    record("start")
    time.sleep(0.05 * (n % 5))  # not every ack with its result in one batch
    record("done")
    return text[::-1]
"""

COUNT = 20
TEXT = (1 << 20) - 1024  # characters: the task's body is just under 1 MiB


def text(n: int) -> str:
    return f"{n:04d}" + "abcdefgh"[n % 8] * (TEXT - 4)


def test_twenty_tasks_of_a_mebibyte_all_run_on_a_worker_of_concurrency_twenty(
    tasks_module: TasksModule,
    start_worker: StartWorker,
    client: conveyor.Client,
    tmp_path: Path,
) -> None:
    tasks = tasks_module(TASKS)
    client.create_queue("big", visibility_timeout=120)
    handles = [tasks.mirror.delay(n, text(n)) for n in range(COUNT)]
    worker = start_worker(["big"], concurrency=COUNT)
    results = [h.result(timeout=90) for h in handles]
    assert results == [text(n)[::-1] for n in range(COUNT)]
    events = read_events(tmp_path)
    assert sorted(ids_with(events, "start")) == sorted(h.id for h in handles)  # each ran once
    stats = client.stats("big")
    assert (stats.delivered_total, stats.dead, stats.ready, stats.leased) == (COUNT, 0, 0, 0)
    assert worker.proc.poll() is None, worker.log()
    # The worker still runs what comes next.
    assert tasks.mirror.delay(0, "small").result(timeout=30) == "llams"
