"""Three ``conveyor serve`` nodes on one PostgreSQL schema, with producers
and workers spread over them; one node is killed with SIGKILL mid-load.

Every task a producer saw acknowledged completes; a task runs twice only if
the worker that ran it first lost its session with the killed node; grouped
tasks run in order and never two at once (DESIGN.md, "Several nodes").
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_harness import (
    PREAMBLE,
    BrokerProcess,
    Event,
    WorkerProcess,
    ids_with,
    read_events,
    wait_until,
)

import conveyor

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

NODES = 3
PRODUCERS = 3
BATCHES = 40  # per producer; each batch is PLAIN plain tasks and GROUPS grouped ones
PLAIN = 20
GROUPS = 4
SESSION_TIMEOUT = 3.0

TASKS = """
app = conveyor.App(os.environ["CONVEYOR_URL"])


@app.task(queue="plain")
def plain(batch):
    record("start")
    time.sleep(0.005)
    record("done")
    return os.getpid()


@app.task(queue="grouped", group=lambda key, seq: key)
def step(key, seq):
    record("start", key, seq, repr(time.time()))
    time.sleep(0.01)
    record("done", key, seq, repr(time.time()))
    return os.getpid()
"""

# Enqueues BATCHES batches through the nodes of argv[2] (in that order of
# preference), writing the ids of every acknowledged batch to produced-N.ids.
PRODUCER = """
import os, sys, time
sys.path.insert(0, os.getcwd())
os.environ["CONVEYOR_URL"] = sys.argv[2]
import tasks_app

index, batches = int(sys.argv[1]), int(sys.argv[3])
with open(f"produced-{{index}}.ids", "a") as out:
    for b in range(batches):
        handles = tasks_app.plain.delay_many([(b,)] * {plain})
        handles += tasks_app.step.delay_many([(f"p{{index}}-g{{k}}", b) for k in range({groups})])
        out.write("".join(h.id + "\\n" for h in handles))
        out.flush()
        time.sleep(0.02)
tasks_app.app.close()
"""


def rotated(nodes: list[BrokerProcess], first: int) -> str:
    """A URL naming every node, ``nodes[first]`` first."""
    order = nodes[first:] + nodes[:first]
    return "conveyor://" + ",".join(f"127.0.0.1:{n.port}" for n in order)


def produced_ids(directory: Path) -> list[str]:
    ids: list[str] = []
    for path in sorted(directory.glob("produced-*.ids")):
        ids += path.read_text().split()
    return ids


@pytest.fixture
def nodes(tmp_path: Path, postgres_url: str, postgres_schema: str) -> Iterator[list[BrokerProcess]]:
    store = f"{postgres_url}?schema={postgres_schema}"
    started = [
        BrokerProcess(
            tmp_path,
            store=store,
            extra=("--heartbeat", "0.5", "--session-timeout", str(SESSION_TIMEOUT)),
            name=f"node-{i}",
        )
        for i in range(NODES)
    ]
    try:
        for node in started:
            node.start()
        yield started
    finally:
        for node in started:
            node.stop()


def test_three_nodes_one_killed_mid_load(nodes: list[BrokerProcess], tmp_path: Path) -> None:
    (tmp_path / "tasks_app.py").write_text(PREAMBLE + textwrap.dedent(TASKS))
    (tmp_path / "producer.py").write_text(PRODUCER.format(plain=PLAIN, groups=GROUPS))
    victim_node = nodes[2]
    admin = conveyor.Client(rotated(nodes, 0), name="test-admin")
    workers: list[WorkerProcess] = []
    producers: list[subprocess.Popen[bytes]] = []
    try:
        for queue in ("plain", "grouped"):
            admin.create_queue(queue, visibility_timeout=30)
        for i in range(NODES):
            worker = WorkerProcess(
                tmp_path,
                rotated(nodes, i),
                "tasks_app:app",
                concurrency=4,
                pool="threads",
                grace=5.0,
                queues=["plain", "grouped"],
                index=i,
            )
            workers.append(worker)
        for worker in workers:
            worker.wait_ready(admin, ["plain", "grouped"])
        # Worker i and producer i talk to node i first.
        orphan = workers[2]
        for i in range(PRODUCERS):
            log = (tmp_path / f"producer-{i}.log").open("wb")
            producers.append(
                subprocess.Popen(
                    [sys.executable, "producer.py", str(i), rotated(nodes, i), str(BATCHES)],
                    cwd=tmp_path,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()

        total = PRODUCERS * BATCHES * (PLAIN + GROUPS)
        wait_until(
            lambda: len(set(ids_with(read_events(tmp_path), "done"))) >= total // 3,
            60,
            "a third of the tasks to be done",
        )
        victim_node.kill()
        killed = time.monotonic()

        for i, producer in enumerate(producers):
            code = producer.wait(timeout=120)
            assert code == 0, (tmp_path / f"producer-{i}.log").read_text()
        ids = produced_ids(tmp_path)
        assert len(ids) == total and len(set(ids)) == total

        wait_until(
            lambda: set(ids_with(read_events(tmp_path), "done")) >= set(ids),
            120,
            "every acknowledged task to be done",
        )
        # The orphaned worker found another node and a new session there.
        wait_until(
            lambda: any(s.name.endswith(f"-{orphan.pid}") for s in admin.sessions()),
            30,
            "the orphaned worker to open a session on another node",
        )
        elapsed = time.monotonic() - killed
        for worker in workers:
            assert worker.proc.poll() is None, worker.log()

        events = read_events(tmp_path)
        started = Counter(ids_with(events, "start"))
        assert set(started) == set(ids), "a task ran that no producer enqueued"
        twice = {i for i, n in started.items() if n > 1}
        assert twice <= set(ids_with(events, "start", orphan.pid)), (
            "a task ran twice though its first worker kept its session"
        )
        assert_groups_exclusive_and_in_order(events)

        wait_until(
            lambda: all(
                (s.ready, s.scheduled, s.leased, s.dead) == (0, 0, 0, 0)
                for s in (admin.stats("plain"), admin.stats("grouped"))
            ),
            30,
            "both queues to be empty",
        )
        acked = admin.stats("plain").acked_total + admin.stats("grouped").acked_total
        assert acked == total
        print(
            f"\n{total} tasks over {NODES} nodes, one killed; all done {elapsed:.1f}s after"
            f" the kill; {len(twice)} ran twice; runs per worker:"
            f" {[len(ids_with(events, 'start', w.pid)) for w in workers]}"
        )
    finally:
        for producer in producers:
            if producer.poll() is None:
                producer.kill()
                producer.wait(10)
        for worker in workers:
            worker.cleanup()
        admin.close()


def assert_groups_exclusive_and_in_order(events: list[Event]) -> None:
    """Per group: runs never overlap in time, and each run's sequence number
    is at least the one before it (a rerun repeats, nothing overtakes)."""
    open_runs: dict[tuple[str, int], tuple[float, int, str]] = {}
    runs: dict[str, list[tuple[float, float, int, str]]] = defaultdict(list)
    for e in events:
        if not e.extra:
            continue
        key, seq, at = e.extra
        if e.kind == "start":
            open_runs[(e.id, e.pid)] = (float(at), int(seq), key)
        elif e.kind == "done":
            began, _, _ = open_runs.pop((e.id, e.pid))
            runs[key].append((began, float(at), int(seq), e.id))
    for (task_id, _), (began, seq, key) in open_runs.items():  # started, never finished
        runs[key].append((began, float("inf"), seq, task_id))
    for key, spans in runs.items():
        spans.sort()
        for a, b in itertools.pairwise(spans):
            assert a[1] <= b[0], f"group {key}: runs of {a[3]} and {b[3]} overlapped"
        seqs = [seq for _, _, seq, _ in spans]
        assert seqs == sorted(seqs), f"group {key} ran out of order: {seqs}"
