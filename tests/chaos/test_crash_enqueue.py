"""kill -9 a producing broker mid-enqueue: every enqueue it acknowledged is
still there after a restart, no body is torn, and every batch is all or
nothing.

The child (crash_enqueue_child.py) prints a line only after an enqueue
returned; it is killed with SIGKILL at a random moment. The parent then
reopens the same SQLite file and receives everything in the queue.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import conveyor
from conveyor.broker.broker import Broker
from conveyor.store.sqlite.store import SqliteStore

sys.path.insert(0, str(Path(__file__).parent))
from crash_enqueue_child import QUEUE, check_body

CHILD = Path(__file__).with_name("crash_enqueue_child.py")
ROUNDS = 3

pytestmark = pytest.mark.chaos


def run_and_kill(db: Path, durability: str, kill_after: float, workdir: Path) -> tuple[str, str]:
    """Start the producer, SIGKILL it ``kill_after`` seconds after it is
    ready; its stdout and stderr."""
    stdout_path, stderr_path = workdir / "stdout.txt", workdir / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(Path(conveyor.__file__).parents[1])}
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        child = subprocess.Popen(
            [sys.executable, str(CHILD), str(db), durability], stdout=out, stderr=err, env=env
        )
    try:
        started = time.monotonic()
        while not stdout_path.read_bytes().startswith(b"ready\n"):
            if child.poll() is not None or time.monotonic() - started > 20:
                raise AssertionError(f"producer did not start: {stderr_path.read_text()}")
            time.sleep(0.01)
        time.sleep(kill_after)
        assert child.poll() is None, f"producer died by itself: {stderr_path.read_text()}"
        child.send_signal(signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    return stdout_path.read_text(), stderr_path.read_text()


def acknowledged(stdout: str) -> tuple[dict[str, int], dict[int, set[str]]]:
    """Ids the producer was told are stored, with their sequence numbers, and
    the ids of each acknowledged batch."""
    ids: dict[str, int] = {}
    batches: dict[int, set[str]] = {}
    lines = stdout.split("\n")
    assert lines[0] == "ready"
    for line in lines[1:-1]:  # the last piece is unterminated (or empty): not acknowledged
        kind, *fields = line.split(" ")
        if kind == "S":
            ids[fields[0]] = int(fields[1])
        else:
            assert kind == "B", line
            pairs = [p.split(":") for p in fields[1:]]
            assert len(pairs) == 10, line
            batches[int(fields[0])] = {i for i, _ in pairs}
            ids.update((i, int(n)) for i, n in pairs)
    return ids, batches


async def stored_messages(db: Path, durability: str) -> dict[str, bytes]:
    """Every message in the queue after a restart, by id."""
    broker = Broker(SqliteStore(db, durability=durability), monitor=False)  # type: ignore[arg-type]
    async with broker:
        stats = await broker.stats(QUEUE)
        session = await broker.open_session("checker")
        found: dict[str, bytes] = {}
        while True:
            got = await broker.receive(session, QUEUE, max=1000)
            if not got:
                break
            for d in got:
                assert d.id not in found, f"{d.id} delivered twice"
                found[d.id] = d.body
        assert stats.ready == len(found), (stats, len(found))
        assert stats.enqueued_total == len(found), (stats, len(found))
        assert stats.scheduled == stats.leased == stats.dead == 0, stats
    return found


@pytest.mark.parametrize("durability", ["os", "fsync"])
async def test_acknowledged_enqueues_survive_kill_9(durability: str, tmp_path: Path) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 32)
    rng.seed(seed)
    for round_ in range(ROUNDS):
        workdir = tmp_path / f"round{round_}"
        workdir.mkdir()
        db = workdir / "conveyor.db"
        kill_after = rng.uniform(0.3, 1.5)
        where = (
            f"(durability {durability}, round {round_}, killed after {kill_after:.2f}s,"
            f" seed {seed})"
        )
        stdout, stderr = run_and_kill(db, durability, kill_after, workdir)
        acked_ids, acked_batches = acknowledged(stdout)
        assert acked_ids, f"the producer acknowledged nothing {where}: {stderr}"

        found = await stored_messages(db, durability)

        stored = set(found)
        lost = sorted(set(acked_ids) - stored)
        assert not lost, f"{len(lost)} acknowledged messages lost {where}: {lost[:10]}"
        decoded: dict[str, tuple[int, int]] = {}
        for message_id, body in found.items():
            try:
                decoded[message_id] = check_body(body)
            except ValueError as exc:
                raise AssertionError(f"corrupt body of {message_id} {where}: {exc}") from None
        swapped = [i for i, seq in acked_ids.items() if decoded[i][0] != seq]
        assert not swapped, f"messages holding another body {where}: {swapped[:10]}"
        seqs = Counter(seq for seq, _ in decoded.values())
        assert max(seqs.values()) == 1, f"a message stored twice {where}"
        # All or nothing: each batch present is whole, acknowledged ones included.
        per_batch = Counter(batch for _, batch in decoded.values() if batch >= 0)
        torn = {b: n for b, n in per_batch.items() if n != 10}
        assert not torn, f"batches stored in part {where}: {torn}"
        missing = [b for b, ids in acked_batches.items() if not ids <= stored]
        assert not missing, f"acknowledged batches missing {where}: {missing[:10]}"
