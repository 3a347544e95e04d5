"""The run: every selected system, every workload (every layout of W5), every
repeat, in that order; each measurement under a time cap taken from the
system's budget. A failure (a timeout, a process that died, an exception) is
recorded with its reason and the run goes on; a system whose budget is spent
has its remaining measurements recorded as failed, never left out.

results.json is rewritten after every system, so an interrupted run keeps
what it measured; ``--append`` measures more systems (or some again) into
an earlier run's results.json, whose settings it must share.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.runner.machine import describe
from bench.runner.measure import Crash, Measurement, MeasurementFailed
from bench.runner.recorder import RECORDER_ENV, Recorder
from bench.runner.systems import load
from bench.runner.systems.base import System
from bench.runner.workloads import WORKLOADS, Workload, sized

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Options:
    systems: list[str]
    workloads: list[str]
    repeat: int
    quick: bool
    timeout_per_system: float  # seconds for all of one system's measurements
    measurement_cap: float  # seconds for one measurement at most
    w4_window: float
    w4_settle: float
    drain_window: float | None  # W2/W5/W6 end this many seconds after the workers start
    fsync_probes: int
    results: Path
    keep_work: bool
    append: bool = False  # merge into the results.json already in ``results``


class Progress:
    """One status line, rewritten in place on a terminal, every few seconds
    otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.index = 0
        self.label = ""
        self.tty = sys.stderr.isatty()
        self._last = 0.0
        self._started = time.monotonic()

    def begin(self, label: str) -> None:
        self.index += 1
        self.label = f"[{self.index}/{self.total}] {label}"
        self._started = time.monotonic()
        self._last = 0.0
        self.show("starting")

    def show(self, status: str) -> None:
        now = time.monotonic()
        text = f"{self.label}: {status} · {now - self._started:.1f} s"
        if self.tty:
            print(f"\r\x1b[2K{text}", end="", file=sys.stderr, flush=True)
        elif now - self._last >= 5.0:
            print(text, file=sys.stderr, flush=True)
            self._last = now

    def end(self, outcome: str) -> None:
        prefix = "\r\x1b[2K" if self.tty else ""
        print(f"{prefix}{self.label}: {outcome}", file=sys.stderr, flush=True)


class Harness:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.run_id = uuid.uuid4().hex[:6]
        self.sequence = 0
        self.workloads = [sized(WORKLOADS[w], options.quick) for w in options.workloads]
        per_system = sum(len(w.processes) for w in self.workloads) * options.repeat
        self.progress = Progress(per_system * len(options.systems))
        self.measurements: list[dict[str, Any]] = []
        self.systems: dict[str, dict[str, Any]] = {}
        self.machine: dict[str, Any] = {}
        self.earlier: dict[str, Any] | None = None  # the run appended to
        if options.append:
            self.earlier = earlier_run(options)
            kept = [n for n in self.earlier["options"]["systems"] if n not in options.systems]
            self.measurements = [m for m in self.earlier["measurements"] if m["system"] in kept]
            self.systems = {n: self.earlier["systems"][n] for n in kept}

    def run(self) -> dict[str, Any]:
        options = self.options
        options.results.mkdir(parents=True, exist_ok=True)
        if not options.append:
            shutil.rmtree(options.results / "logs", ignore_errors=True)  # this run's logs only
        work = Path(tempfile.mkdtemp(prefix=".bench-work-", dir=Path.cwd()))
        self.machine = describe(work, options.fsync_probes)
        fsync = self.machine["fdatasync"]
        print(
            f"machine: {self.machine['cores']} cores, fdatasync {fsync['median_ms']:.2f} ms"
            f" (at most {fsync['commits_per_s_limit']:,.0f} one-at-a-time commits/s),"
            f" load {self.machine['load_average'][0]:.2f}",
            file=sys.stderr,
        )
        recorder = Recorder(work)
        recorder.start()
        try:
            for name in options.systems:
                self.run_system(name, work, recorder)
                self.write()
        finally:
            recorder.stop()
            if not options.keep_work:
                shutil.rmtree(work, ignore_errors=True)
        return self.write()

    def run_system(self, name: str, work: Path, recorder: Recorder) -> None:
        budget_end = time.monotonic() + self.options.timeout_per_system
        system = None
        try:
            system = load(name)
            system.start(work)
            self.systems[name] = system.info()
        except Exception as exc:
            self.systems[name] = {"error": f"could not start: {exc!r}"}
            self.fail_all(name, f"could not start: {exc!r}")
            if system is not None:
                _stop(system)
            return
        try:
            for workload in self.workloads:
                for processes in workload.processes:
                    for repeat in range(self.options.repeat):
                        remaining = budget_end - time.monotonic()
                        self.measure(system, workload, processes, repeat, remaining, recorder)
        finally:
            _stop(system)

    def fail_all(self, name: str, reason: str) -> None:
        for workload in self.workloads:
            for processes in workload.processes:
                for repeat in range(self.options.repeat):
                    self.progress.begin(f"{name} {workload.id} p={processes} #{repeat + 1}")
                    self.progress.end(f"FAILED: {reason}")
                    self.measurements.append(
                        _record(name, workload, processes, repeat, "", error=reason)
                    )

    def measure(
        self,
        system: System,
        workload: Workload,
        processes: int,
        repeat: int,
        remaining: float,
        recorder: Recorder,
    ) -> None:
        label = f"{system.name} {workload.id} p={processes} #{repeat + 1}"
        self.progress.begin(label)
        layout = "producer only" if workload.kind == "enqueue" else system.layout(processes)
        if remaining <= 0:
            reason = "timeout: the system's time budget (--timeout-per-system) was spent"
            self.progress.end(f"FAILED: {reason}")
            self.measurements.append(
                _record(system.name, workload, processes, repeat, layout, error=reason)
            )
            return
        self.sequence += 1
        queue = f"bench_{self.run_id}_{self.sequence}"
        env = {
            **system.env(queue),
            RECORDER_ENV: recorder.url,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        logs = self.options.results / "logs" / system.name / f"{workload.id}-p{processes}-{repeat}"
        cap = min(self.options.measurement_cap, remaining)
        measurement = Measurement(
            system=system, workload=workload, processes=processes, queue=queue, env=env,
            recorder=recorder, logs=logs, deadline=time.monotonic() + cap,
            crash=Crash(self.options.w4_window, self.options.w4_settle),
            show=self.progress.show, drain_window=self.options.drain_window,
        )  # fmt: skip
        record = _record(system.name, workload, processes, repeat, layout)
        self.run_measurement(system, measurement, record)
        self.measurements.append(record)

    def run_measurement(
        self, system: System, measurement: Measurement, record: dict[str, Any]
    ) -> None:
        started = time.monotonic()
        try:
            values = record["values"] = measurement.run()
            if len(measurement.probes) == 2:
                before, after = measurement.probes
                seconds = values.get("seconds") or after["monotonic"] - before["monotonic"]
                count = measurement.workload.count
                record["probe"] = system.probe_delta(before, after, count, seconds)
            record["ok"] = True
            self.progress.end(_summary(record["values"]))
        except MeasurementFailed as exc:
            record["error"] = str(exc)
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            record["seconds"] = time.monotonic() - started
            try:
                system.cleanup(measurement.queue)
            except Exception as exc:
                record["cleanup_error"] = repr(exc)
        if not record["ok"]:
            self.progress.end(f"FAILED: {record['error'].splitlines()[0]}")

    def write(self) -> dict[str, Any]:
        options = self.options
        run_id, machine, systems = self.run_id, self.machine, options.systems
        appended: list[dict[str, Any]] = []
        if self.earlier is not None:
            e = self.earlier
            run_id, machine = e["run_id"], e["machine"]
            this = {"run_id": self.run_id, "machine": self.machine, "systems": options.systems}
            appended = [*e.get("appended", []), this]
            systems = [n for n in e["options"]["systems"] if n not in systems] + systems
        results = {
            "run_id": run_id,
            "options": {
                **asdict(options), "systems": systems, "append": False,
                "results": str(options.results),
            },
            "machine": machine,
            "appended": appended,  # later runs measured into this one: their ids and machines
            "workloads": {w.id: asdict(w) for w in self.workloads},
            "systems": self.systems,
            "measurements": self.measurements,
            "summary": summarize(self.measurements),
        }  # fmt: skip
        path = options.results / "results.json"
        path.write_text(json.dumps(results, indent=1, default=str))
        return results


SHARED = ("workloads", "repeat", "quick", "drain_window", "w4_window", "w4_settle")


def earlier_run(options: Options) -> dict[str, Any]:
    """The results.json that ``--append`` adds to; refused unless it was
    measured with the same settings (else its figures would not compare)."""
    path = options.results / "results.json"
    try:
        earlier: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--append: cannot read {path}: {exc}") from None
    mine = asdict(options)
    differ = [k for k in SHARED if earlier["options"].get(k) != mine[k]]
    if differ:
        raise SystemExit(
            "--append: the earlier run was measured with other settings: "
            + ", ".join(f"{k} {earlier['options'].get(k)!r} (now {mine[k]!r})" for k in differ)
        )
    return earlier


def _stop(system: System) -> None:
    try:
        system.stop()
    except Exception as exc:
        print(f"{system.name}: stopping failed: {exc!r}", file=sys.stderr)


def _record(
    system: str,
    workload: Workload,
    processes: int,
    repeat: int,
    layout: str,
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "system": system,
        "workload": workload.id,
        "processes": processes,
        "repeat": repeat,
        "layout": layout,
        "ok": False,
        "error": error,
        "values": {},
        "probe": {},
        "seconds": 0.0,
    }


_HEADLINE = ("enqueues_per_s", "tasks_per_s", "p99_ms", "lost")


def _summary(values: dict[str, Any]) -> str:
    parts = []
    for key in (*_HEADLINE, "p50_ms", "completed_twice", "kill_to_last_s"):
        if key in values:
            parts.append(f"{key}={values[key]:,.1f}")
    return "ok: " + ", ".join(parts)


def summarize(measurements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The median of every number over the successful repeats of each
    (system, workload, processes)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for m in measurements:
        groups.setdefault((m["system"], m["workload"], m["processes"]), []).append(m)
    summary = []
    for (system, workload, processes), runs in groups.items():
        ok = [r for r in runs if r["ok"]]
        entry: dict[str, Any] = {
            "system": system,
            "workload": workload,
            "processes": processes,
            "layout": runs[0]["layout"],
            "ok": len(ok),
            "runs": len(runs),
            "errors": [r["error"] for r in runs if not r["ok"]],
            "median": _medians([r["values"] for r in ok]),
            "probe": _medians([r["probe"] for r in ok]),
        }
        summary.append(entry)
    return summary


def _medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in {k for row in rows for k in row}:
        values = [row[key] for row in rows if key in row]
        if all(isinstance(v, int | float) for v in values):
            out[key] = statistics.median(values)
        elif all(isinstance(v, list) for v in values):
            # Per-index median of lists (W3's latency quantiles).
            out[key] = [statistics.median(col) for col in zip(*values, strict=False)]
    return out
