"""Conveyor's worker runtime alone: real `conveyor serve` and `conveyor worker`
processes on loopback.

    python bench/workers.py --tasks 20000 --workers 2 --concurrency 8 [--prefetch 16]

Prints two measurements:
  drain     no-op tasks queued first, then the workers start: tasks/s from
            the first task's start to the last one's acknowledgement, and
            from the workers' launch (start-up included);
  failover  tasks of 0.5 s on two workers; one is killed with SIGKILL while
            it runs tasks: seconds from the kill until every task it was
            running has started again on the other worker.
Tasks write one line per start to a file of their own (pid, task id, time),
which the script reads; the broker's stats say when all were acknowledged.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import conveyor
from network import say, start_server  # bench/ is on sys.path: this script's directory
from runner.processes import cpu_seconds

TASKS = """
import os, time
import conveyor

app = conveyor.App()
LOG = os.environ["BENCH_LOG"]

def _log(kind, i):
    with open(f"{LOG}.{os.getpid()}", "a") as f:
        f.write(f"{kind} {i} {time.time():.6f}\\n")

@app.task(queue="drain")
def noop(i):
    if i == 0:
        _log("first", i)

@app.task(queue="failover")
def slow(i):
    _log("start", i)
    time.sleep(0.5)
"""


def read_log(log: Path) -> list[tuple[int, str, int, float]]:
    """(pid, kind, task number, time) for every line the tasks wrote."""
    lines = []
    for path in log.parent.glob(log.name + ".*"):
        pid = int(path.suffix[1:])
        for line in path.read_text().splitlines():
            kind, i, t = line.split()
            lines.append((pid, kind, int(i), float(t)))
    return lines


def start_workers(
    work: Path, url: str, queue: str, n: int, args: argparse.Namespace
) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "CONVEYOR_URL": url, "BENCH_LOG": str(work / "log")}
    cmd = [sys.executable, "-m", "conveyor", "worker", "bench_tasks:app", "--queues", queue,
           "--concurrency", str(args.concurrency), "--pool", args.pool,
           "--prefetch", str(args.prefetch or args.concurrency),
           "--log-level", "warning"]  # fmt: skip
    return [subprocess.Popen(cmd, cwd=work, env=env) for _ in range(n)]


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_acked(client: conveyor.Client, queue: str, total: int, label: str) -> float:
    while True:
        done = client.stats(queue).acked_total
        print(f"\r  {label}: {done:,}/{total:,}", end="", file=sys.stderr, flush=True)
        if done >= total:
            print(file=sys.stderr)
            return time.time()
        time.sleep(0.02)


def drain(work: Path, url: str, args: argparse.Namespace, tasks: object) -> None:
    noop = tasks.noop  # type: ignore[attr-defined]
    with conveyor.Client(url) as client:
        client.create_queue("drain")
        for start in range(0, args.tasks, 500):
            noop.delay_many([(i,) for i in range(start, min(args.tasks, start + 500))])
        launched = time.time()
        workers = start_workers(work, url, "drain", args.workers, args)
        try:
            finished = wait_acked(client, "drain", args.tasks, "drain")
            cpu = sum(cpu_seconds(w.pid) for w in workers)
        finally:
            stop(workers)
    first = min(t for _, kind, _, t in read_log(work / "log") if kind == "first")
    say(
        f"drain: {args.tasks:,} no-op tasks, {args.workers} workers x {args.concurrency}"
        f" ({args.pool}, prefetch {args.prefetch or args.concurrency}):"
        f" {args.tasks / (finished - first):,.0f} tasks/s from the first start,"
        f" {args.tasks / (finished - launched):,.0f}/s from the workers' launch;"
        f" workers' CPU {1e6 * cpu / args.tasks:,.0f} us per task (start-up included)"
    )


def failover(work: Path, url: str, args: argparse.Namespace, tasks: object) -> None:
    slow = tasks.slow  # type: ignore[attr-defined]
    total = 8 * args.concurrency
    with conveyor.Client(url) as client:
        client.create_queue("failover")
        workers = start_workers(work, url, "failover", 2, args)
        try:
            slow.delay_many([(i,) for i in range(total)])
            victim = workers[0]
            while not any(pid == victim.pid for pid, *_ in read_log(work / "log")):
                time.sleep(0.01)
            time.sleep(0.2)  # mid-task
            victim.send_signal(signal.SIGKILL)
            killed = time.time()
            victim.wait()
            wait_acked(client, "failover", total, "failover")
        finally:
            stop(workers)
    lines = [line for line in read_log(work / "log") if line[1] == "start"]
    held = {i for pid, _, i, t in lines if pid == victim.pid and killed - 0.5 < t < killed}
    again = {
        i: min(t for pid, _, j, t in lines if j == i and pid != victim.pid and t >= killed)
        for i in held
    }
    worst = max(again.values()) - killed
    say(
        f"failover: SIGKILL of a worker running {len(held)} tasks: all of them started again"
        f" on the other worker within {worst:.3f} s (first after"
        f" {min(again.values()) - killed:.3f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--prefetch", type=int, default=None, help="default: the concurrency")
    parser.add_argument("--pool", default="threads", choices=["threads", "processes", "async"])
    parser.add_argument("--durability", default="fsync", choices=["fsync", "os", "memory"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "bench_tasks.py").write_text(TASKS)
        os.environ["BENCH_LOG"] = str(work / "log")
        sys.path.insert(0, str(work))
        server, url = start_server(["--data", str(work / "data")], args.durability)
        os.environ["CONVEYOR_URL"] = url
        import bench_tasks  # type: ignore[import-not-found]

        say(f"conveyor serve --durability {args.durability}; {os.cpu_count()} cores")
        try:
            drain(work, url, args, bench_tasks)
            failover(work, url, args, bench_tasks)
        finally:
            bench_tasks.app.close()
            server.send_signal(signal.SIGTERM)
            server.wait(30)


if __name__ == "__main__":
    main()
