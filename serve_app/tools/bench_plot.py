"""Plots of serving benchmarks: one run's latencies over time, and systems compared by load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402


def plot_run(summary: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> Path:
    """TTFT and ATGT of every request against its arrival time, with the SLO lines."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    ok = [r for r in rows if r["ok"]]
    for ax, key, slo, name in ((axes[0], "ttft_ms", summary["slo_ttft_ms"], "TTFT"),
                               (axes[1], "atgt_ms", summary["slo_atgt_ms"], "ATGT")):
        points = [(r["arrival_s"], r[key]) for r in ok if r[key] is not None]
        colors = ["tab:blue" if r["slo_met"] else "tab:red" for r in ok if r[key] is not None]
        if points:
            ax.scatter(*zip(*points), s=6, c=colors)
        ax.axhline(slo, color="black", linestyle="--", linewidth=1, label=f"SLO {slo:g} ms")
        ax.set_xlabel("arrival (s)")
        ax.set_ylabel(f"{name} (ms)")
        ax.set_yscale("log")
        ax.legend(loc="upper left")
    failed = summary["failed"]
    fig.suptitle(f"{summary['label']}: attainment {summary['attainment']:.3f}, goodput "
                 f"{summary['goodput_per_s']:.2f} req/s, {failed} failed (red: SLO missed)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_comparison(points: list[dict[str, Any]], path: Path) -> Path:
    """Attainment and goodput per system against offered load (`points`: one dict per run with
    system, offered_rate_per_s, attainment, goodput_per_s); repeated runs show as separate dots
    joined through their mean."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    systems = sorted({p["system"] for p in points})
    for system in systems:
        mine = [p for p in points if p["system"] == system]
        by_rate: dict[float, list[dict[str, Any]]] = {}
        for p in mine:
            by_rate.setdefault(p["rate_scale"], []).append(p)
        for ax, key in ((axes[0], "attainment"), (axes[1], "goodput_per_s")):
            line = sorted((sum(q["offered_rate_per_s"] for q in v) / len(v), sum(q[key] for q in v) / len(v))
                          for v in by_rate.values())
            (drawn,) = ax.plot(*zip(*line), marker="o", label=system)
            ax.scatter([p["offered_rate_per_s"] for p in mine], [p[key] for p in mine], s=12,
                       color=drawn.get_color(), alpha=0.6)
    axes[0].axhline(0.9, color="gray", linestyle=":", linewidth=1)
    axes[0].axhline(0.99, color="gray", linestyle="--", linewidth=1)
    axes[0].set_ylabel("SLO attainment")
    axes[1].set_ylabel("goodput (requests meeting SLOs / s)")
    for ax in axes:
        ax.set_xlabel("offered load (requests / s)")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
