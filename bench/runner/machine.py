"""The machine a run was measured on: cores, memory, load, and the latency of
one fdatasync on the disk of the working directory (1/latency is the most
commits per second that disk allows when each waits for its own flush)."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def fdatasync_latency(directory: Path, count: int) -> dict[str, float]:
    """Time ``count`` rewrites of 4 KiB, each followed by fdatasync."""
    path = directory / "fdatasync.probe"
    block = os.urandom(4096)
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, block)
        os.fdatasync(fd)
        for _ in range(count):
            os.pwrite(fd, block, 0)
            start = time.perf_counter()
            os.fdatasync(fd)
            samples.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    median = statistics.median(samples)
    return {
        "count": count,
        "median_ms": median * 1000,
        "mean_ms": statistics.mean(samples) * 1000,
        "max_ms": max(samples) * 1000,
        "commits_per_s_limit": 1 / median if median > 0 else float("inf"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def describe(directory: Path, fsync_probes: int) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": round(_memory_gib(), 1),
        "load_average": os.getloadavg(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "working_dir": str(directory.resolve()),
        "fdatasync": fdatasync_latency(directory, fsync_probes),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
