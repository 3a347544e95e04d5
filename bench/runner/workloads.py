"""The workloads of shared/bench/WORKLOADS.md, at full size and at --quick
size (every count about ten times smaller)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Kind = Literal["enqueue", "drain", "latency", "crash"]
SCALE_QUICK = 10


@dataclass(frozen=True)
class Workload:
    id: str
    kind: Kind
    title: str
    count: int
    batch: int = 1  # tasks per enqueue call (W1b: 100)
    size: int = 100  # bytes of the payload's string
    processes: tuple[int, ...] = (2,)  # worker processes; one measurement each (W5)
    rate: int = 0  # W3: tasks per second from the producer
    sleep: float = 0.0  # W4: seconds each task takes
    kill_after: float = 0.0  # W4: seconds after the first completion


WORKLOADS: dict[str, Workload] = {
    w.id: w
    for w in (
        Workload("W1", "enqueue", "one producer, single enqueues, each waits for its reply",
                 10_000),
        Workload("W1b", "enqueue", "one producer, enqueues in batches of 100", 100_000,
                 batch=100),
        Workload("W2", "drain", "drain a full queue with workers on both cores", 20_000),
        Workload("W3", "latency", "steady 500 tasks/s for 20 s, enqueue-to-start latency",
                 10_000, rate=500),
        Workload("W4", "crash", "2,000 tasks of 20 ms, one of two workers SIGKILLed after 1 s",
                 2_000, sleep=0.02, kill_after=1.0),
        Workload("W5", "drain", "W2 with 1, 2, 4 and 8 worker processes", 20_000,
                 processes=(1, 2, 4, 8)),
        Workload("W6", "drain", "W2 with a 10 KB payload", 20_000, size=10_000),
    )
}  # fmt: skip


def sized(workload: Workload, quick: bool) -> Workload:
    if not quick:
        return workload
    return replace(
        workload,
        count=max(workload.batch, workload.count // SCALE_QUICK),
        kill_after=workload.kill_after / SCALE_QUICK,
    )
