"""One measurement: one system, one workload, one worker layout, one repeat.

Every system is measured by the same code: the producer is a process of its
own (bench/runner/produce.py), workers are the system's own worker commands,
and completion is read from the recorder (bench/runner/recorder.py). Every
wait has the measurement's deadline; passing it raises ``MeasurementFailed``
with what had been done by then.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.runner import processes
from bench.runner.recorder import Completion, Recorder
from bench.runner.systems.base import System
from bench.runner.workloads import Workload

WARMUP_TASKS = 50
POLL = 0.1
QUANTILES = 100  # W3 keeps the latency at every percentile, for the plot


class MeasurementFailed(Exception):
    """The measurement could not finish: a timeout, or a process that failed."""


@dataclass
class Crash:
    """W4's settings besides the workload's own."""

    window: float  # seconds after the kill during which completions are awaited
    settle: float  # seconds without a new completion, once all are done


@dataclass
class Measurement:
    system: System
    workload: Workload
    processes: int
    queue: str
    env: dict[str, str]
    recorder: Recorder
    logs: Path
    deadline: float  # time.monotonic()
    crash: Crash
    show: Callable[[str], None]
    drain_window: float | None = None  # W2/W5/W6: seconds after the workers' start, at most
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    probes: list[dict[str, float]] = field(default_factory=list)  # around the timed phase

    @property
    def key(self) -> str:
        return f"{self.queue}:done"

    def run(self) -> dict[str, Any]:
        kinds = {
            "enqueue": self.enqueue,
            "drain": self.drain,
            "latency": self.latency,
            "crash": self.crash_test,
        }
        try:
            return kinds[self.workload.kind]()
        finally:
            processes.stop(self.workers)
            self.recorder.forget(self.key)
            self.recorder.forget(f"{self.key}:warm")

    # -- the workloads -------------------------------------------------------------

    def enqueue(self) -> dict[str, Any]:
        """W1, W1b: enqueues/s of one producer, no worker running."""
        w = self.workload
        self.probe()
        result = self.produce(self.key, w.count, batch=w.batch)
        self.probe()
        return {"enqueues_per_s": w.count / result["seconds"], "seconds": result["seconds"]}

    def drain(self) -> dict[str, Any]:
        """W2, W5, W6: fill the queue, then start the workers and time the drain."""
        w = self.workload
        self.produce(self.key, w.count, batch=100)
        self.probe()
        launched = time.time()
        self.start_workers(self.processes)
        until = None if self.drain_window is None else time.monotonic() + self.drain_window
        done = self.wait_for(self.key, w.count, until)
        self.probe()
        drained = len({c.i for c in done})
        first = min(c.started for c in done)
        last = max(c.finished for c in done)
        seconds = last - first
        return {
            "tasks_per_s": drained / seconds,
            "mb_per_s": drained * w.size / seconds / 1e6,
            "seconds": seconds,
            "from_launch_s": last - launched,
            "drained": drained,  # fewer than the workload's count: the drain window ended it
            "duplicates": len(done) - drained,
        }

    def latency(self) -> dict[str, Any]:
        """W3: workers running, a producer at a steady rate; enqueue-to-start."""
        w = self.workload
        self.start_workers(self.processes)
        warm = f"{self.key}:warm"
        self.produce(warm, WARMUP_TASKS)
        self.wait_for(warm, WARMUP_TASKS)
        self.probe()
        result = self.produce(self.key, w.count, rate=w.rate)
        done = self.wait_for(self.key, w.count)
        self.probe()
        ms = sorted(1000 * (c.started - c.enqueued) for c in done)
        return {
            "p50_ms": _percentile(ms, 50),
            "p99_ms": _percentile(ms, 99),
            "max_ms": ms[-1],
            "mean_ms": statistics.mean(ms),
            "achieved_rate": w.count / result["seconds"],
            "seconds": result["seconds"],
            "quantiles_ms": [_percentile(ms, q) for q in range(QUANTILES + 1)],
        }

    def crash_test(self) -> dict[str, Any]:
        """W4: two workers on tasks of 20 ms; SIGKILL one a while after the
        first completion; count what completed once, twice, or never."""
        w = self.workload
        self.produce(self.key, w.count, batch=100, sleep=w.sleep)
        self.probe()
        self.start_workers(self.processes)
        self.wait_for(self.key, 1)
        time.sleep(w.kill_after)
        processes.kill(self.workers[0])
        killed = time.time()
        done = self.observe_recovery(w.count, killed)
        self.probe()
        seen = Counter(c.i for c in done)
        last = max((c.finished for c in done), default=killed)
        return {
            "completed": len(seen),
            "completed_twice": sum(1 for n in seen.values() if n >= 2),
            "lost": w.count - len(seen),
            "kill_to_last_s": last - killed,
            "window_s": self.crash.window,
        }

    # -- the parts -------------------------------------------------------------------

    def probe(self) -> None:
        """The system's own counters (Conveyor's /metrics), with the time."""
        snapshot = self.system.probe()
        if snapshot:
            self.probes.append({**snapshot, "monotonic": time.monotonic()})

    def produce(
        self, key: str, count: int, batch: int = 1, rate: float = 0.0, sleep: float = 0.0
    ) -> dict[str, Any]:
        """Run the producer process; its JSON result."""
        args = [sys.executable, "-m", "bench.runner.produce", self.system.name,
                "--key", key, "--count", str(count), "--batch", str(batch),
                "--size", str(self.workload.size), "--rate", str(rate),
                "--sleep", str(sleep)]  # fmt: skip
        log = self.logs / "producer.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as err:
            proc = subprocess.Popen(args, env=self.env, stdout=subprocess.PIPE, stderr=err)
            while proc.poll() is None:
                if time.monotonic() > self.deadline:
                    proc.kill()
                    proc.wait()
                    sent = self.recorder.sent(key)
                    raise MeasurementFailed(f"timeout: the producer had sent {sent:,}/{count:,}")
                self.show(f"sent {self.recorder.sent(key):,}/{count:,}")
                time.sleep(POLL)
            out = proc.stdout.read() if proc.stdout else b""
        if proc.returncode != 0:
            raise MeasurementFailed(f"the producer failed:\n{processes.tail(log)}")
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result

    def start_workers(self, count: int) -> None:
        for i in range(len(self.workers), len(self.workers) + count):
            args = self.system.worker_args(self.queue)
            log = self.logs / f"worker-{i}.log"
            self.workers.append(processes.spawn(args, self.env, log))

    def wait_for(self, key: str, count: int, until: float | None = None) -> list[Completion]:
        """Wait until ``count`` different tasks completed, or until the
        monotonic time ``until`` once two have; all completions."""
        while True:
            n = self.recorder.count(key)
            window_over = until is not None and time.monotonic() >= until and n >= 2
            if n >= count or window_over:
                done = self.recorder.read(key)
                if window_over or len({c.i for c in done}) >= count:
                    return done
            self._check(key, n, count)
            self.show(f"done {n:,}/{count:,}")
            time.sleep(POLL)

    def observe_recovery(self, count: int, killed: float) -> list[Completion]:
        """W4: completions until all tasks ran and none came for ``settle``
        seconds, or until the window after the kill closed."""
        window_end = time.monotonic() + self.crash.window
        end = min(window_end, self.deadline)
        last_n, last_change, complete = -1, time.monotonic(), False
        while time.monotonic() < end:
            n = self.recorder.count(self.key)
            if n != last_n:
                last_n, last_change = n, time.monotonic()
            complete = len({c.i for c in self.recorder.read(self.key)}) >= count
            if complete and time.monotonic() - last_change >= self.crash.settle:
                break
            self.show(f"done {n:,}/{count:,} · {time.time() - killed:.1f} s after the kill")
            time.sleep(POLL * 5)
        if not complete and self.deadline < window_end:
            # The cap, not the window, ended the wait: a timeout, not a loss.
            raise MeasurementFailed(
                f"timeout: {last_n:,}/{count:,} completions when the measurement's cap ended"
                " W4's window"
            )
        return self.recorder.read(self.key)

    def _check(self, key: str, n: int, count: int) -> None:
        if time.monotonic() > self.deadline:
            raise MeasurementFailed(f"timeout: {n:,}/{count:,} tasks completed")
        if self.workers and all(p.poll() is not None for p in self.workers):
            log = self.logs / "worker-0.log"
            raise MeasurementFailed(
                f"every worker exited ({n:,}/{count:,} completed):\n{processes.tail(log)}"
            )


def _percentile(ordered: list[float], p: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]
