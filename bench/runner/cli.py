"""``python -m bench run ...`` and ``python -m bench report``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.runner.systems import SYSTEMS
from bench.runner.workloads import WORKLOADS

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _names(value: str, known: dict[str, object], what: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})"
        )
    return names


def _positive(value: str) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value}")
    return seconds


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="Conveyor beside its peers.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="measure, then write results.json, results.md and plots")
    run.add_argument(
        "--systems",
        type=lambda v: _names(v, SYSTEMS, "system"),
        default=list(SYSTEMS),
        help=f"comma-separated (default: all): {','.join(SYSTEMS)}",
    )
    run.add_argument(
        "--workloads",
        type=lambda v: _names(v, WORKLOADS, "workload"),
        default=list(WORKLOADS),
        help=f"comma-separated (default: all): {','.join(WORKLOADS)}",
    )
    run.add_argument("--repeat", type=int, default=3, help="runs of each measurement (median)")
    run.add_argument("--quick", action="store_true", help="every size ~10x smaller: a smoke run")
    run.add_argument(
        "--timeout-per-system",
        type=float,
        default=None,
        metavar="S",
        help="seconds for all of one system's measurements (default 5400, quick 900)",
    )
    run.add_argument(
        "--measurement-cap",
        type=float,
        default=None,
        metavar="S",
        help="seconds for one measurement at most (default 600, quick 120)",
    )
    run.add_argument(
        "--w4-window",
        type=float,
        default=60.0,
        metavar="S",
        help="W4: seconds after the kill to wait for the remaining tasks (default 60)",
    )
    run.add_argument(
        "--w4-settle",
        type=float,
        default=5.0,
        metavar="S",
        help="W4: once all tasks ran, seconds without a completion before stopping",
    )
    run.add_argument(
        "--drain-window",
        type=_positive,
        default=None,
        metavar="S",
        help="W2, W5, W6: stop a drain S seconds after the workers start and report the rate"
        " of the tasks done by then (marked in the tables; default: drain all)",
    )
    run.add_argument("--fsync-probes", type=int, default=200, help="fdatasync calls timed")
    run.add_argument("--results", type=Path, default=RESULTS, help="output directory")
    run.add_argument(
        "--append",
        action="store_true",
        help="measure these systems into the results.json already in --results (same settings"
        " required), replacing their earlier figures",
    )
    run.add_argument("--keep-work", action="store_true", help="keep the working directory")
    report = sub.add_parser("report", help="rewrite results.md and the plots from results.json")
    report.add_argument("--results", type=Path, default=RESULTS)
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from bench.runner.harness import Harness, Options

    options = Options(
        systems=args.systems,
        workloads=args.workloads,
        repeat=max(1, args.repeat),
        quick=args.quick,
        timeout_per_system=args.timeout_per_system or (900.0 if args.quick else 5400.0),
        measurement_cap=args.measurement_cap or (120.0 if args.quick else 600.0),
        w4_window=args.w4_window,
        drain_window=args.drain_window,
        w4_settle=args.w4_settle,
        fsync_probes=args.fsync_probes,
        results=args.results,
        keep_work=args.keep_work,
        append=args.append,
    )
    results = Harness(options).run()
    return write_outputs(results, args.results)


def cmd_report(args: argparse.Namespace) -> int:
    results = json.loads((args.results / "results.json").read_text())
    return write_outputs(results, args.results)


def write_outputs(results: dict[str, object], directory: Path) -> int:
    from bench.runner.report import render

    (directory / "results.md").write_text(render(results))
    try:
        from bench.runner.plots import plot_all
    except ImportError as exc:
        print(f"no plots: {exc} (pip install matplotlib)", file=sys.stderr)
    else:
        for path in plot_all(results, directory):
            print(f"wrote {path}", file=sys.stderr)
    print(f"wrote {directory / 'results.json'} and {directory / 'results.md'}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        return cmd_report(args)
    except KeyboardInterrupt:
        return 130
