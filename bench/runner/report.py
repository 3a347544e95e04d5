"""results.md from results.json: the machine and durability notes, then a
table per workload with each figure's ratio to Conveyor's in the same run,
Conveyor's own figures, and every failure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

BASE = "conveyor"
Summary = dict[tuple[str, str, int], dict[str, Any]]


def _num(value: Any, digits: int = 0) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(value: Any, base: Any) -> str:
    if not isinstance(value, int | float) or not isinstance(base, int | float) or not base:
        return "-"
    return f"{value / base:.2f}x"


class Report:
    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self.systems: list[str] = results["options"]["systems"]
        self.summary: Summary = {
            (s["system"], s["workload"], s["processes"]): s for s in results["summary"]
        }
        self.lines: list[str] = []
        self.cut = False  # a drain in the table just written was ended by the drain window

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + "---|" * len(header))
        self.add(*("| " + " | ".join(row) + " |" for row in rows), "")

    def entry(self, system: str, workload: str, processes: int = 2) -> dict[str, Any]:
        return self.summary.get((system, workload, processes), {})

    def value(self, system: str, workload: str, key: str, processes: int = 2) -> Any:
        return self.entry(system, workload, processes).get("median", {}).get(key)

    def drain(self, system: str, workload: str, processes: int = 2) -> str:
        """A drain's tasks/s, marked ``*`` when the drain window ended it early."""
        value = _num(self.value(system, workload, "tasks_per_s", processes))
        drained = self.value(system, workload, "drained", processes)
        count = self.results["workloads"][workload]["count"]
        if isinstance(drained, int | float) and drained < count:
            self.cut = True
            return f"{value}*"
        return value

    def cut_note(self) -> None:
        if self.cut:
            window = self.results["options"].get("drain_window")
            self.add(
                f"`*`: the drain window (`--drain-window {window:g}`: at most {window:g} s after"
                " the workers started) ended this drain before every task was done; the figure is"
                " the rate of the tasks done by then.",
                "",
            )
            self.cut = False

    def runs(self, system: str, workload: str, processes: int = 2) -> str:
        e = self.entry(system, workload, processes)
        return f"{e['ok']}/{e['runs']}" if e else "-"

    # -- sections ---------------------------------------------------------------------

    def header(self) -> None:
        r = self.results
        m, o = r["machine"], r["options"]
        fsync = m["fdatasync"]
        size = "--quick (every size ~10x smaller)" if o["quick"] else "full size"
        later = "".join(
            f" Measured into it by run `{a['run_id']}` of {a['machine']['date']} with the same"
            f" settings ({a['machine']['cpu']}, fdatasync median"
            f" {a['machine']['fdatasync']['median_ms']:.3f} ms): {', '.join(a['systems'])}."
            for a in r.get("appended", [])
        )
        self.add(
            "# Conveyor beside its peers",
            "",
            f"Run `{r['run_id']}` of {m['date']}, {size}, each measurement run"
            f" {o['repeat']} time(s); the tables give the median of the successful runs.{later}",
            "Ratios (`x Conveyor`) divide a system's figure by Conveyor's **in these same"
            " results**; absolute figures drift between runs and machines.",
            "",
            f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux"
            f" {m['kernel']}, Python {m['python']}; load average at the start"
            f" {m['load_average'][0]:.2f}. Disk of the working directory: fdatasync median"
            f" {fsync['median_ms']:.3f} ms (mean {fsync['mean_ms']:.3f}, max"
            f" {fsync['max_ms']:.3f}, {fsync['count']} calls), so at most"
            f" {fsync['commits_per_s_limit']:,.0f} commits/s for commits that each wait for"
            " their own flush.",
            "",
            "Completion is observed the same way for every system: each task appends one line"
            " to a Redis list (one RPUSH) on a redis-server of the suite's own.",
            "",
        )

    def systems_table(self) -> None:
        rows = []
        for name in self.systems:
            info = self.results["systems"].get(name, {})
            if "error" in info:
                rows.append([name, "-", "-", info["error"], "-", "-"])
                continue
            rows.append([
                name, info.get("version", "-"), info.get("server_version", "-"),
                info.get("durability", "-"),
                f"{info.get('concurrency', '-')} ({info.get('pool', '-')})", info.get("bulk", "-"),
            ])  # fmt: skip
        self.add("## Systems", "")
        self.table(
            ["system", "version", "server", "durability", "tasks at once per worker process",
             "W1b batches"], rows,
        )  # fmt: skip
        self.add("How each is configured, and what happens to a killed worker's tasks:", "")
        for name in self.systems:
            info = self.results["systems"].get(name, {})
            settings = "; ".join(f"{k}: {v}" for k, v in info.get("settings", {}).items())
            if settings:
                self.add(f"- **{name}**: {settings}. Redelivery: {info.get('redelivery', '-')}.")
        self.add("")

    def throughput(self, workload: str, title: str, key: str, unit: str) -> None:
        base = self.value(BASE, workload, key)
        shown = self.drain if key == "tasks_per_s" else lambda n, w: _num(self.value(n, w, key))
        rows = [
            [name, shown(name, workload), _ratio(self.value(name, workload, key), base),
             self.runs(name, workload)]
            for name in self.systems
        ]  # fmt: skip
        self.add(f"## {workload}: {title}", "")
        self.table(["system", unit, "x Conveyor", "runs ok"], rows)
        self.cut_note()

    def latency(self) -> None:
        base = self.value(BASE, "W3", "p99_ms")
        rows = []
        for name in self.systems:
            v = self.entry(name, "W3").get("median", {})
            rows.append([
                name, _num(v.get("p50_ms"), 2), _num(v.get("p99_ms"), 2),
                _num(v.get("max_ms"), 2), _num(v.get("achieved_rate")),
                _ratio(v.get("p99_ms"), base), self.runs(name, "W3"),
            ])  # fmt: skip
        self.add("## W3: enqueue-to-start latency at a steady 500 tasks/s", "")
        self.add("`achieved rate`: what the producer reached (single enqueues, each awaited).", "")
        self.table(
            ["system", "p50 ms", "p99 ms", "max ms", "achieved rate/s", "p99 x Conveyor",
             "runs ok"], rows,
        )  # fmt: skip

    def crash(self) -> None:
        rows = []
        window = None
        for name in self.systems:
            v = self.entry(name, "W4").get("median", {})
            window = window or v.get("window_s")
            rows.append([
                name, _num(v.get("completed")), _num(v.get("completed_twice")),
                _num(v.get("lost")), _num(v.get("kill_to_last_s"), 1), self.runs(name, "W4"),
            ])  # fmt: skip
        self.add("## W4: one of two workers killed with SIGKILL", "")
        self.add(
            f"Tasks of 20 ms; one worker process (with its children) is killed a while after"
            f" the first completion. `lost`: never completed within {_num(window)} s after the"
            " kill. `kill -> last`: seconds from the kill to the last completion.",
            "",
        )
        self.table(
            ["system", "completed at least once", "completed twice",
             "lost (not completed in the window)", "kill -> last (s)", "runs ok"], rows,
        )  # fmt: skip

    def scale(self) -> None:
        layouts = sorted({p for (_, w, p) in self.summary if w == "W5"})
        rows = []
        for name in self.systems:
            row = [name]
            for p in layouts:
                value = self.value(name, "W5", "tasks_per_s", p)
                ratio = _ratio(value, self.value(BASE, "W5", "tasks_per_s", p))
                row.append(f"{self.drain(name, 'W5', p)} ({ratio})")
            rows.append(row)
        self.add("## W5: W2 with 1, 2, 4 and 8 worker processes (tasks/s, x Conveyor)", "")
        self.table(["system", *(f"{p} process{'es' if p > 1 else ''}" for p in layouts)], rows)
        self.cut_note()

    def payload(self) -> None:
        base = self.value(BASE, "W6", "tasks_per_s")
        rows = [
            [name, self.drain(name, "W6"), _num(self.value(name, "W6", "mb_per_s"), 2),
             _ratio(self.value(name, "W6", "tasks_per_s"), base), self.runs(name, "W6")]
            for name in self.systems
        ]  # fmt: skip
        self.add("## W6: W2 with a 10 KB payload", "")
        self.table(["system", "tasks/s", "MB/s", "x Conveyor", "runs ok"], rows)
        self.cut_note()

    def conveyor_figures(self) -> None:
        rows = []
        for (system, workload, processes), e in sorted(self.summary.items()):
            probe = e.get("probe", {})
            if system != BASE or not probe:
                continue
            rows.append([
                f"{workload} p={processes}", _num(probe.get("commits_per_s")),
                _num(probe.get("operations_per_commit"), 1), _num(probe.get("commit_ms"), 3),
                _num(probe.get("fsyncs_per_s")), _num(probe.get("messages_per_fsync"), 1),
                _num(probe.get("fsync_ms"), 3), _num(probe.get("broker_cpu_us_per_message"), 1),
            ])  # fmt: skip
        if not rows:
            return
        self.add(
            "## Conveyor's own figures",
            "",
            "From the server's /metrics (conveyor_store_commits_total,"
            " conveyor_store_commit_operations_total, conveyor_store_commit_seconds_total,"
            " conveyor_store_fsyncs_total, conveyor_store_fsync_seconds_total) and"
            " the broker process's utime+stime (/proc/<pid>/stat), over the timed part of each"
            " workload. CPU per message counts everything the broker did for it in that"
            " workload (W2: delivery and ack; W4: enqueue was before the window).",
            "",
        )
        self.table(
            [
                *("workload", "commits/s", "operations/commit", "commit ms"),
                *("fsyncs/s", "messages/fsync", "fsync ms", "broker CPU us/message"),
            ],
            rows,
        )

    def failures(self) -> None:
        failed = [m for m in self.results["measurements"] if not m["ok"]]
        self.add("## Failures", "")
        if not failed:
            self.add("None.", "")
            return
        for m in failed:
            reason = (m.get("error") or "?").splitlines()[0]
            self.add(f"- {m['system']} {m['workload']} p={m['processes']} run"
                     f" {m['repeat'] + 1}: {reason}")  # fmt: skip
        self.add("")


def render(results: dict[str, Any]) -> str:
    report = Report(results)
    report.header()
    report.systems_table()
    workloads = set(results["options"]["workloads"])
    sections: list[tuple[str, Callable[[], None]]] = [
        ("W1", lambda: report.throughput("W1", "single enqueues, each awaited", "enqueues_per_s",
                                         "enqueues/s")),
        ("W1b", lambda: report.throughput("W1b", "enqueues in batches of 100", "enqueues_per_s",
                                          "enqueues/s")),
        ("W2", lambda: report.throughput("W2", "drain a full queue, workers on both cores",
                                         "tasks_per_s", "tasks/s")),
        ("W3", report.latency),
        ("W4", report.crash),
        ("W5", report.scale),
        ("W6", report.payload),
    ]  # fmt: skip
    for workload, section in sections:
        if workload in workloads:
            section()
    report.conveyor_figures()
    report.failures()
    return "\n".join(report.lines)
