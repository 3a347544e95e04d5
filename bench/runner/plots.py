"""The PNG plots: throughput per system (W1, W1b, W2, W6), the W3 latency
distribution, and the W5 scale curve. Conveyor is drawn in its own colour."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

BASE = "conveyor"
BASE_COLOUR, PEER_COLOUR = "#d62728", "#7f7f7f"
# Peers' line colours: tab10 without its red, which is Conveyor's.
PEER_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf", "#000000")  # fmt: skip
THROUGHPUT = (
    ("W1", "enqueues_per_s", "W1: single enqueues/s"),
    ("W1b", "enqueues_per_s", "W1b: enqueues/s in batches of 100"),
    ("W2", "tasks_per_s", "W2: drain, tasks/s"),
    ("W6", "tasks_per_s", "W6: drain with 10 KB payloads, tasks/s"),
)


def _medians(results: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(s["system"], s["workload"], s["processes"]): s["median"] for s in results["summary"]}


def _style(system: str, systems: list[str]) -> dict[str, Any]:
    if system == BASE:
        return {"color": BASE_COLOUR, "linewidth": 2.5}
    peers = [s for s in systems if s != BASE]
    return {"color": PEER_COLOURS[peers.index(system) % len(PEER_COLOURS)], "linewidth": 1.2}


def _subtitle(results: dict[str, Any]) -> str:
    m = results["machine"]
    quick = ", --quick sizes" if results["options"]["quick"] else ""
    return (
        f"{m['cores']} cores, fdatasync {m['fdatasync']['median_ms']:.3f} ms{quick},"
        f" median of {results['options']['repeat']} run(s), run {results['run_id']}"
    )


def plot_throughput(results: dict[str, Any], path: Path) -> Path | None:
    medians = _medians(results)
    systems: list[str] = results["options"]["systems"]
    panels = [p for p in THROUGHPUT if p[0] in results["options"]["workloads"]]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.2 + 0.35 * len(systems) * len(panels)))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (workload, key, title) in zip(axes, panels, strict=True):
        values = [medians.get((s, workload, 2), {}).get(key, 0.0) for s in systems]
        colours = [BASE_COLOUR if s == BASE else PEER_COLOUR for s in systems]
        bars = ax.barh(systems, values, color=colours)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10, loc="left")
        for bar, value in zip(bars, values, strict=True):
            label = f" {value:,.0f}" if value else " failed / not run"
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, label,
                    va="center", fontsize=8)  # fmt: skip
        ax.margins(x=0.2)
    fig.suptitle(f"Throughput per system ({_subtitle(results)})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latency(results: dict[str, Any], path: Path) -> Path | None:
    medians = _medians(results)
    fig, ax = plt.subplots(figsize=(9.5, 5))
    drawn = False
    for system in results["options"]["systems"]:
        quantiles = medians.get((system, "W3", 2), {}).get("quantiles_ms")
        if not quantiles:
            continue
        percent = list(range(len(quantiles)))
        style = _style(system, results["options"]["systems"])
        ax.plot([max(q, 1e-3) for q in quantiles], percent, label=system, **style)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_xlabel("enqueue-to-start latency (ms, log scale)")
    ax.set_ylabel("percentile")
    ax.set_title(f"W3: latency at a steady 500 tasks/s\n{_subtitle(results)}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scale(results: dict[str, Any], path: Path) -> Path | None:
    medians = _medians(results)
    layouts = sorted({p for (_, w, p) in medians if w == "W5"})
    if not layouts:
        return None
    fig, ax = plt.subplots(figsize=(9.5, 5))
    for system in results["options"]["systems"]:
        points = [(p, medians.get((system, "W5", p), {}).get("tasks_per_s")) for p in layouts]
        points = [(p, v) for p, v in points if v]
        if not points:
            continue
        style = _style(system, results["options"]["systems"])
        ax.plot(*zip(*points, strict=True), marker="o", label=system, **style)
    ax.set_xscale("log", base=2)
    ax.set_xticks(layouts, [str(p) for p in layouts])
    ax.set_yscale("log")
    ax.set_xlabel("worker processes")
    ax.set_ylabel("tasks/s (log scale)")
    ax.set_title(f"W5: drain throughput by worker processes\n{_subtitle(results)}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(results: dict[str, Any], directory: Path) -> list[Path]:
    made = [
        plot_throughput(results, directory / "throughput.png"),
        plot_latency(results, directory / "w3_latency.png"),
        plot_scale(results, directory / "w5_scale.png"),
    ]
    return [p for p in made if p is not None]
