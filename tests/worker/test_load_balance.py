"""Two workers on one queue share its work: the broker's credit-based flow
control (prefetch = concurrency) hands each worker only what it can start,
so neither hoards the backlog.

No timed assertion (DESIGN.md, Tests): instead of "two are faster than one",
the test checks that both workers did a fair share and did it at the same
time, which is what makes two faster than one.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from worker_harness import StartWorker, TasksModule, ids_with, read_events, wait_until

TASKS = """
app = conveyor.App(os.environ["CONVEYOR_URL"])


@app.task(queue="work")
def nap(seconds):
    record("start", time.time())
    time.sleep(seconds)
    record("done", time.time())
"""

COUNT = 200


def test_two_workers_share_one_queue(
    tasks_module: TasksModule, start_worker: StartWorker, tmp_path: Path
) -> None:
    tasks = tasks_module(TASKS)
    workers = [start_worker(["work"], concurrency=2) for _ in range(2)]
    handles = tasks.nap.delay_many([(0.02,)] * COUNT)
    ids = {h.id for h in handles}

    def all_done() -> bool:
        return set(ids_with(read_events(tmp_path), "done")) >= ids

    wait_until(all_done, 60, f"{COUNT} tasks to complete")
    events = read_events(tmp_path)
    assert Counter(ids_with(events, "done")) == Counter(ids)  # each exactly once
    assert Counter(ids_with(events, "start")) == Counter(ids)

    per_worker = Counter(e.pid for e in events if e.kind == "done")
    assert set(per_worker) == {w.pid for w in workers}
    assert min(per_worker.values()) >= COUNT // 4, per_worker

    # They worked side by side: each one's busy span overlaps most of the other's.
    spans = []
    for worker in workers:
        times = [float(e.extra[0]) for e in events if e.pid == worker.pid]
        spans.append((min(times), max(times)))
    overlap = min(s[1] for s in spans) - max(s[0] for s in spans)
    shorter = min(s[1] - s[0] for s in spans)
    assert overlap >= 0.5 * shorter, spans
    assert all(w.proc.poll() is None for w in workers)
