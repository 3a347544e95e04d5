"""Workers and the broker killed or frozen under load (DESIGN.md, Tests and
"The worker side of a lease"): lost work must be 0, and a task may run twice
only if the worker that ran it first died holding it, or lost its lease, in
which case its outcome does not count.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from worker_harness import (
    BrokerProcess,
    StartWorker,
    TasksModule,
    ids_with,
    read_events,
    wait_until,
)

import conveyor

TASKS = """
app = conveyor.App(os.environ["CONVEYOR_URL"])


@app.task(queue="work")
def nap(seconds):
    record("start")
    time.sleep(seconds)
    record("done")
    return os.getpid()


@app.task(queue="lease")
def guarded():
    # About 4 s of work in 1 s steps, stopping early once the lease is lost.
    record("start")
    lost = False
    for _ in range(4):
        time.sleep(1.0)
        if conveyor.current_task().lease_lost:
            lost = True
            break
    record("done", f"lease_lost={lost}")
    return os.getpid()
"""

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def all_done(directory: Path, ids: set[str]) -> bool:
    return set(ids_with(read_events(directory), "done")) >= ids


def test_kill_9_of_a_worker_loses_nothing(
    tasks_module: TasksModule, start_worker: StartWorker, client: conveyor.Client, tmp_path: Path
) -> None:
    concurrency = 2
    tasks = tasks_module(TASKS)
    victim = start_worker(["work"], concurrency=concurrency)
    survivor = start_worker(["work"], concurrency=concurrency)
    handles = tasks.nap.delay_many([(0.02,)] * 500)
    ids = {h.id for h in handles}
    wait_until(
        lambda: len(ids_with(read_events(tmp_path), "done", victim.pid)) >= 60,
        20,
        "the victim to be well into the work",
    )

    victim.signal(signal.SIGKILL)
    victim.wait(timeout=10)
    # Its session ends, and its leases go back, when its connection drops:
    # long before the broker's session timeout (a minute, conftest.py).
    wait_until(
        lambda: not any(s.name.endswith(f"-{victim.pid}") for s in client.sessions()),
        20,
        "the victim's session to end with its connection",
    )
    wait_until(lambda: all_done(tmp_path, ids), 60, "every task to complete after the kill")

    events = read_events(tmp_path)
    started = Counter(ids_with(events, "start"))
    assert set(started) == ids
    victim_started = ids_with(events, "start", victim.pid)
    victim_done = ids_with(events, "done", victim.pid)
    survivor_started = Counter(ids_with(events, "start", survivor.pid))
    assert len(victim_started) < 500, "the kill came after the victim had run everything"

    # The tasks the victim held when it died: started and not finished, or
    # finished but not yet acked. It never holds more than its prefetch
    # (= concurrency) unsettled leases.
    running_at_kill = set(victim_started) - set(victim_done)
    duplicates = {i for i, n in started.items() if n > 1}
    assert duplicates <= set(victim_started), "a task the victim never ran ran twice"
    assert len(duplicates) <= concurrency, duplicates
    assert running_at_kill <= duplicates  # what it was running, the survivor ran again
    assert max(survivor_started.values()) == 1  # the survivor ran nothing twice

    # Every task's committed outcome is exactly one run's: the victim's only
    # for tasks it finished and nobody ran again.
    owners = {h.id: h.result(timeout=10) for h in handles}
    assert {i for i, pid in owners.items() if pid == victim.pid} == set(victim_done) - duplicates
    assert {i for i, pid in owners.items() if pid == survivor.pid} == ids - (
        set(victim_done) - duplicates
    )
    stats = client.stats("work")
    assert (stats.ready, stats.scheduled, stats.leased, stats.dead) == (0, 0, 0, 0)
    assert stats.acked_total == 500
    assert survivor.proc.poll() is None


def test_frozen_worker_past_its_lease_loses_it_and_its_outcome(
    tasks_module: TasksModule, start_worker: StartWorker, client: conveyor.Client, tmp_path: Path
) -> None:
    client.create_queue("lease", visibility_timeout=2)
    tasks = tasks_module(TASKS)
    frozen = start_worker(["lease"], concurrency=1)
    handle = tasks.guarded.delay()
    wait_until(
        lambda: ids_with(read_events(tmp_path), "start", frozen.pid), 20, "the task to start"
    )

    frozen.signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        # Its lease runs out 2 s after delivery; the other worker gets the task.
        other = start_worker(["lease"], concurrency=1)
        wait_until(
            lambda: ids_with(read_events(tmp_path), "start", other.pid),
            15,
            "the task to be delivered again",
        )
        time.sleep(max(0.0, stopped + 6.0 - time.monotonic()))
    finally:
        frozen.signal(signal.SIGCONT)

    def done_by(pid: int) -> list[str]:
        return [e.extra[0] for e in read_events(tmp_path) if e.kind == "done" and e.pid == pid]

    assert wait_until(lambda: done_by(other.pid), 20, "the other worker to finish") == [
        "lease_lost=False"
    ]
    # Thawed, the frozen worker's own clock says the lease is past its
    # deadline: the task is told, and its outcome is discarded.
    assert wait_until(lambda: done_by(frozen.pid), 20, "the frozen run to end") == [
        "lease_lost=True"
    ]
    assert handle.result(timeout=10) == other.pid
    wait_until(lambda: "outcome discarded" in frozen.log(), 10, "the frozen worker to discard it")
    assert ids_with(read_events(tmp_path), "start") == [handle.id, handle.id]
    stats = client.stats("lease")
    assert (stats.ready, stats.leased, stats.dead, stats.acked_total) == (0, 0, 0, 1)
    assert frozen.proc.poll() is None  # it lost a lease, not its life


def test_kill_9_of_the_broker_under_load(
    tasks_module: TasksModule,
    start_worker: StartWorker,
    broker: BrokerProcess,
    tmp_path: Path,
) -> None:
    tasks = tasks_module(TASKS)
    workers = [start_worker(["work"], concurrency=2) for _ in range(2)]
    handles = tasks.nap.delay_many([(0.02,)] * 300)
    ids = {h.id for h in handles}
    wait_until(
        lambda: len(ids_with(read_events(tmp_path), "done")) >= 60,
        20,
        "the workers to be well into the work",
    )

    broker.kill()
    done_at_kill = len(set(ids_with(read_events(tmp_path), "done")))
    assert done_at_kill < 300, "the kill came after all the work was done"
    broker.start()  # same port, same data directory

    # The workers reconnect by themselves and finish everything.
    wait_until(lambda: all_done(tmp_path, ids), 60, "every task to complete after the restart")
    events = read_events(tmp_path)
    duplicates = {i for i, n in Counter(ids_with(events, "start")).items() if n > 1}
    # Only leases held at the kill (at most each worker's prefetch) run again.
    assert len(duplicates) <= 4, duplicates
    pids = {w.pid for w in workers}
    assert {e.pid for e in events} == pids
    assert all(w.proc.poll() is None for w in workers)
    with conveyor.Client(broker.url, name="test-after-restart") as after:
        assert {after.result(i, timeout=10).status for i in ids} == {"ok"}
        stats = after.stats("work")
        assert (stats.ready, stats.scheduled, stats.leased, stats.dead) == (0, 0, 0, 0)
