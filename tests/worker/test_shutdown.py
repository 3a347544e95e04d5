"""Stopping a worker (runtime.py, "Shutdown"): the first SIGTERM stops taking
work, gives back prefetched messages that have not started, and waits up to
``--grace`` seconds for the running ones; a second signal exits at once.
Either way nothing is lost: what the worker did not finish, another worker
gets.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from worker_harness import StartWorker, TasksModule, ids_with, read_events, wait_until

TASKS = """
app = conveyor.App(os.environ["CONVEYOR_URL"])


@app.task(queue="work")
def slow(seconds):
    record("start")
    time.sleep(seconds)
    record("done")
    return os.getpid()


@app.task(queue="work")
def linger():
    # Runs until the test drops the flag file (at most a minute).
    record("start")
    flag = os.path.join(HERE, "quick")
    deadline = time.monotonic() + 60
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.05)
    record("done")
    return os.getpid()
"""

pytestmark = pytest.mark.slow

# The thread pool cannot stop a running task; the process pool kills its child.
POOLS = ["threads", "processes"]


@pytest.mark.parametrize("pool", POOLS)
def test_sigterm_finishes_running_tasks_and_loses_nothing(
    pool: str, tasks_module: TasksModule, start_worker: StartWorker, tmp_path: Path
) -> None:
    tasks = tasks_module(TASKS)
    first = start_worker(["work"], concurrency=4, grace=5, pool=pool)
    handles = tasks.slow.delay_many([(0.5,)] * 20)
    ids = [h.id for h in handles]
    wait_until(
        lambda: len(ids_with(read_events(tmp_path), "start")) >= 4,
        20,
        "four tasks to be running",
    )

    first.signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert first.wait(timeout=15) == 0, first.log()
    # The running tasks take 0.5 s: the worker must not sit out its whole grace.
    assert time.monotonic() - signalled < 4.0
    assert "still running after the grace period" not in first.log()

    # Everything so far is the first worker's (or its pool's children's).
    events = read_events(tmp_path)
    first_pids = {e.pid for e in events}
    started_first = ids_with(events, "start")
    done_first = ids_with(events, "done")
    assert sorted(started_first) == sorted(done_first), "a running task was cut short"
    assert 4 <= len(done_first) < 20

    # The pool under test is the first worker's; the second one is a thread
    # worker, which meets test_backlog.py's race far less often.
    start_worker(["work"], concurrency=4)
    wait_until(
        lambda: set(ids_with(read_events(tmp_path), "done")) >= set(ids),
        30,
        "every task to complete",
    )
    events = read_events(tmp_path)
    # Nothing ran twice: what the first worker gave back had not started.
    assert Counter(ids_with(events, "start")) == Counter(ids)
    assert Counter(ids_with(events, "done")) == Counter(ids)
    # And what the first worker finished was acked by it (its result stands).
    owners = {h.id: h.result(timeout=10) for h in handles}
    assert {i for i, pid in owners.items() if pid in first_pids} == set(done_first)


def test_second_sigterm_exits_at_once_and_the_task_is_redelivered(
    tasks_module: TasksModule, start_worker: StartWorker, tmp_path: Path
) -> None:
    tasks = tasks_module(TASKS)
    first = start_worker(["work"], concurrency=1, grace=30)
    handle = tasks.linger.delay()
    wait_until(lambda: ids_with(read_events(tmp_path), "start", first.pid), 20, "the task to start")

    first.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert first.proc.poll() is None, "the first SIGTERM must wait for the running task"
    first.signal(signal.SIGTERM)
    signalled = time.monotonic()
    returncode = first.wait(timeout=10)
    assert time.monotonic() - signalled < 2.0
    assert returncode != 0  # not a clean stop

    # The task it was running is not lost: the broker released its lease
    # when the connection dropped, and another worker runs it.
    (tmp_path / "quick").touch()
    second = start_worker(["work"], concurrency=1)
    assert handle.result(timeout=20) == second.pid
    events = read_events(tmp_path)
    assert ids_with(events, "start") == [handle.id, handle.id]
    assert ids_with(events, "done") == [handle.id]  # the first one never finished it


@pytest.mark.parametrize("pool", POOLS)
def test_tasks_running_past_the_grace_period_go_to_another_worker(
    pool: str, tasks_module: TasksModule, start_worker: StartWorker, tmp_path: Path
) -> None:
    tasks = tasks_module(TASKS)
    first = start_worker(["work"], concurrency=2, grace=1, pool=pool)
    handles = [tasks.linger.delay() for _ in range(2)]
    wait_until(
        lambda: len(ids_with(read_events(tmp_path), "start")) == 2, 20, "both tasks to start"
    )
    first_pids = {e.pid for e in read_events(tmp_path)}

    first.signal(signal.SIGTERM)
    signalled = time.monotonic()
    # Past the grace period the worker gives up on them and drops its
    # connection, so the broker releases their leases to the next worker.
    start_worker(["work"], concurrency=2)
    wait_until(
        lambda: len(ids_with(read_events(tmp_path), "start")) == 4,
        20,
        "the second worker to start both tasks",
    )
    assert "still running after the grace period" in first.log()

    # And the first worker is gone by then: it waits up to the grace, not
    # for its tasks to end (they run until the flag file appears).
    try:
        first.wait(timeout=max(0.1, signalled + 4.0 - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(
            "the worker was still alive 4 s after SIGTERM with --grace 1, held by "
            f"the tasks it had given up on:\n{first.log()}"
        )

    (tmp_path / "quick").touch()
    owners = [h.result(timeout=20) for h in handles]
    assert not set(owners) & first_pids
    assert {e.pid for e in read_events(tmp_path) if e.kind == "done"}.isdisjoint(first_pids)
