"""The figure of `aladdin compare --plot`: attainment vs GPUs per policy, GPUs over time under
autoscaling. matplotlib is imported inside `write_plot` only, so `placement` does not need it."""

from __future__ import annotations

from placement.evaluation.compare import Comparison, PolicyResult


def write_plot(comparison: Comparison, path: str, title: str = "") -> None:
    """Write the comparison's figure to `path` (PNG): one panel of attainment vs GPUs (the
    points the search simulated, the target as a dotted line, each policy's minimum circled),
    and, if the comparison has autoscaled runs, one of GPUs held over time."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = 2 if comparison.autoscaled else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4.6), squeeze=False)
    ax = axes[0][0]
    for name, result in comparison.policies.items():
        if not result.curve:
            continue
        gpus, attainment = zip(*result.curve)
        label = _policy_label(name, result)
        (line,) = ax.plot(gpus, attainment, marker="o", markersize=4, label=label)
        if result.min_gpus is not None:
            ax.plot([result.min_gpus], [result.attainment], marker="o", markersize=11, fillstyle="none",
                    color=line.get_color())
    ax.axhline(comparison.target, color="grey", linestyle=":", label=f"target {comparison.target:g}")
    # a policy that never reaches the target is searched up to --max-gpus, which would squash
    # the region where the others reach it: show up to 1.5x the largest minimum (its legend
    # entry says how far it was searched)
    found = [r.min_gpus for r in comparison.policies.values() if r.min_gpus is not None]
    searched = [g for r in comparison.policies.values() for g, _ in r.curve]
    if searched:
        lo, hi = min(searched), 1.5 * max(found) if found else max(searched)
        pad = 0.04 * (hi - lo) + 0.5
        ax.set_xlim(lo - pad, hi + pad)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("GPUs")
    ax.set_ylabel("SLO attainment")
    # attainment far below the target is all "overloaded": zoom on the part that decides
    low = min((a for r in comparison.policies.values() for _, a in r.curve), default=0.0)
    ax.set_ylim(max(low, comparison.target - 0.2) - 0.01, 1.005)
    ax.set_title("Attainment vs GPUs (circled: fewest meeting the target)", fontsize=10)
    ax.grid(alpha=0.3)
    _legend_below(ax, columns=2)

    if comparison.autoscaled:
        ax = axes[0][1]
        for run in comparison.autoscaled.values():
            times = [t / 60 for t, _ in run.timeline] + [run.makespan_s / 60]
            gpus = [g for _, g in run.timeline] + [run.timeline[-1][1]]
            label = (f"{run.policy}, {run.scaler} rule (tp{run.tp}): "
                     f"{run.gpu_hours:.1f} GPU-h, attainment {run.attainment:.3f}")
            ax.step(times, gpus, where="post", label=label)
        ax.set_xlabel("time (min)")
        ax.set_ylabel("GPUs held")
        ax.set_ylim(bottom=0)
        ax.set_title("Autoscaled: GPUs over time", fontsize=10)
        ax.grid(alpha=0.3)
        _legend_below(ax, columns=1)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def _policy_label(name: str, result: PolicyResult) -> str:
    if result.min_gpus is None:
        return f"{name} (tp{result.tp}): misses up to {result.curve[-1][0]} GPUs"
    return f"{name} (tp{result.tp}): {result.min_gpus} GPUs"


def _legend_below(ax, columns: int) -> None:
    # below the axes: inside, it hid the curves it names
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=columns, frameon=False)
