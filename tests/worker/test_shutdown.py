"""Stopping a worker (runtime.py, "Shutdown"): the first SIGTERM stops taking
work, gives back prefetched messages that have not started, and waits up to
``--grace`` seconds for the running ones; a second signal exits at once.
Either way nothing is lost: what the worker did not finish, another worker
gets.

No bound here is a duration: where a test shows that something did not wait
(the grace period, a task), that thing is made to last far longer than the
test waits for it; and the broker's session timeout is a minute (conftest.py),
so leases that come back in time came back because a connection dropped.
"""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from worker_harness import StartWorker, TasksModule, ids_with, read_events, wait_until

import conveyor

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
    # Runs until the test drops the flag file (at most two minutes).
    record("start")
    flag = os.path.join(HERE, "quick")
    deadline = time.monotonic() + 120
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.05)
    record("done")
    return os.getpid()
"""

pytestmark = pytest.mark.slow

# The thread pool cannot stop a running task; the process pool kills its child.
POOLS = ["threads", "processes"]
LONG_GRACE = 120.0  # a grace period no test waits out
VISIBILITY = 300.0  # leases no test waits out: a lease that comes back was given back
PATIENCE = 30.0  # what only a worker that waits out LONG_GRACE (or its tasks) reaches


@pytest.mark.parametrize("pool", POOLS)
def test_sigterm_finishes_running_tasks_and_loses_nothing(
    pool: str, tasks_module: TasksModule, start_worker: StartWorker, tmp_path: Path
) -> None:
    tasks = tasks_module(TASKS)
    first = start_worker(["work"], concurrency=4, grace=LONG_GRACE, pool=pool)
    handles = tasks.slow.delay_many([(0.5,)] * 20)
    ids = [h.id for h in handles]
    wait_until(
        lambda: len(ids_with(read_events(tmp_path), "start")) >= 4,
        20,
        "four tasks to be running",
    )

    first.signal(signal.SIGTERM)
    # The running tasks take 0.5 s: the worker exits once they end, without
    # sitting out its grace period.
    assert first.wait(timeout=PATIENCE) == 0, first.log()
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
    tasks_module: TasksModule, start_worker: StartWorker, client: conveyor.Client, tmp_path: Path
) -> None:
    client.create_queue("work", visibility_timeout=VISIBILITY)
    tasks = tasks_module(TASKS)
    first = start_worker(["work"], concurrency=1, grace=LONG_GRACE)
    handle = tasks.linger.delay()
    wait_until(lambda: ids_with(read_events(tmp_path), "start", first.pid), 20, "the task to start")

    first.signal(signal.SIGTERM)
    wait_until(lambda: "stopping (signal" in first.log(), 20, "the first SIGTERM to be heard")
    assert first.proc.poll() is None, "the first SIGTERM must wait for the running task"
    first.signal(signal.SIGTERM)
    # It exits at once: not after its task nor its grace period.
    returncode = first.wait(timeout=PATIENCE)
    assert returncode != 0  # not a clean stop

    # The task it was running is not lost: the broker released its lease
    # when the connection dropped, and another worker runs it.
    (tmp_path / "quick").touch()
    second = start_worker(["work"], concurrency=1)
    assert handle.result(timeout=PATIENCE) == second.pid
    events = read_events(tmp_path)
    assert ids_with(events, "start") == [handle.id, handle.id]
    assert ids_with(events, "done") == [handle.id]  # the first one never finished it


@pytest.mark.parametrize("pool", POOLS)
def test_tasks_running_past_the_grace_period_go_to_another_worker(
    pool: str,
    tasks_module: TasksModule,
    start_worker: StartWorker,
    client: conveyor.Client,
    tmp_path: Path,
) -> None:
    client.create_queue("work", visibility_timeout=VISIBILITY)
    tasks = tasks_module(TASKS)
    first = start_worker(["work"], concurrency=2, grace=1, pool=pool)
    handles = [tasks.linger.delay() for _ in range(2)]
    wait_until(
        lambda: len(ids_with(read_events(tmp_path), "start")) == 2, 20, "both tasks to start"
    )
    first_pids = {e.pid for e in read_events(tmp_path)}

    first.signal(signal.SIGTERM)
    # Past the grace period the worker gives up on them and drops its
    # connection, so the broker releases their leases to the next worker.
    start_worker(["work"], concurrency=2)
    wait_until(
        lambda: len(ids_with(read_events(tmp_path), "start")) == 4,
        PATIENCE,
        "the second worker to start both tasks",
    )
    assert "still running after the grace period" in first.log()

    # And the first worker is gone: it waits up to the grace, not for its
    # tasks to end (they run until the flag file appears).
    try:
        first.wait(timeout=PATIENCE)
    except subprocess.TimeoutExpired:
        pytest.fail(
            "the worker outlived its --grace 1 after SIGTERM, held by the tasks it"
            f" had given up on:\n{first.log()}"
        )

    (tmp_path / "quick").touch()
    owners = [h.result(timeout=20) for h in handles]
    assert not set(owners) & first_pids
    assert {e.pid for e in read_events(tmp_path) if e.kind == "done"}.isdisjoint(first_pids)
