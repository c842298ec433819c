"""`compare` over a matrix of workloads x profile families x rate scales: one table of the
fewest GPUs per policy at the target, the planner's estimate, and Aladdin's attainment at twice
its minimum (whether attainment keeps rising with GPUs or plateaus below the target).

Workloads: the traces in the shared data folder (Azure conversation, Mooncake synthetic) and the
project's synthetic presets (`placement.evaluation.workloads`). Cells run one after another (or in
processes with `jobs`); each is `placement.evaluation.compare.compare` on the cell's scenario.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from placement.evaluation.compare import SAME_TP_BASELINES, compare
from placement.simulator.scenario import Scenario, run
from placement.traces import TraceRequest, load_trace, scale_rate
from placement.evaluation.workloads import PRESETS
from predictors.latency.families import load_profile_family

# trace workloads: name -> path under the data folder, and a TTFT SLO of its own where its
# prompts need one (Mooncake's run to the whole context: a 4k-token prefill on 70B TP8 takes
# ~0.5 s, so 1 s would leave queueing almost nothing)
TRACES = {
    "azure-conv": ("azure_llm_2023/AzureLLMInferenceTrace_conv.csv", None),
    "mooncake": ("mooncake_fast25/synthetic_trace.jsonl", 2.0),
}
WORKLOADS = (*TRACES, *PRESETS)
FAMILIES = ("llama-2-7b-a100", "llama-2-70b-a100")
RATE_SCALES = (1.0, 4.0)


@dataclass(frozen=True)
class Cell:
    workload: str
    family: str
    rate_scale: float

    @property
    def label(self) -> str:
        return f"{self.workload} {self.family} x{self.rate_scale:g}"


@dataclass
class CellResult:
    cell: Cell
    slo_ttft_s: float
    comparison: dict[str, Any]
    aladdin_at_2x: float | None  # Aladdin's attainment at twice its fewest workers
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def aladdin_gpus(self) -> int | None:
        return self.comparison["policies"]["aladdin"]["min_gpus"]

    @property
    def best_same_tp_gpus(self) -> int | None:
        gpus = [self.comparison["policies"][p]["min_gpus"] for p in SAME_TP_BASELINES]
        return min((g for g in gpus if g), default=None)

    @property
    def planner_over_aladdin(self) -> float | None:
        a = self.aladdin_gpus
        return self.comparison["planner"]["gpus"] / a if a else None

    @property
    def aladdin_over_best(self) -> float | None:
        a, b = self.aladdin_gpus, self.best_same_tp_gpus
        return a / b if a and b else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.cell.workload, "family": self.cell.family, "rate_scale": self.cell.rate_scale,
            "slo_ttft_s": self.slo_ttft_s, "aladdin_at_2x_min": self.aladdin_at_2x,
            "aladdin_over_best_same_tp": self.aladdin_over_best, "planner_over_aladdin": self.planner_over_aladdin,
            "seconds": self.seconds, **self.comparison,
        }


def workload_trace(name: str, data_dir: str | Path, limit: int | None = None) -> list[TraceRequest]:
    """A workload's requests: a trace read from `data_dir`, or a synthetic preset."""
    if name in TRACES:
        trace = load_trace(Path(data_dir) / TRACES[name][0])
    elif name in PRESETS:
        trace = PRESETS[name].trace()
    else:
        raise ValueError(f"unknown workload {name!r}; available: {', '.join(WORKLOADS)}")
    return trace[:limit] if limit else trace


def cells(workloads: Iterable[str] = WORKLOADS, families: Iterable[str] = FAMILIES,
          rate_scales: Iterable[float] = RATE_SCALES) -> list[Cell]:
    """Every combination; ValueError for an unknown workload or family, or a scale <= 0."""
    workloads, families, rate_scales = list(workloads), list(families), list(rate_scales)
    for name in workloads:
        if name not in WORKLOADS:
            raise ValueError(f"unknown workload {name!r}; available: {', '.join(WORKLOADS)}")
    for name in families:
        load_profile_family(name)
    if any(k <= 0 for k in rate_scales):
        raise ValueError("rate scales must be > 0")
    return [Cell(w, f, k) for w in workloads for f in families for k in rate_scales]


def run_cell(cell: Cell, *, data_dir: str | Path, slo_ttft_s: float, slo_atgt_s: float, target: float,
             limit: int | None = None, autoscaled: bool = True, max_gpus: int = 1024) -> CellResult:
    """`compare` on one cell, and Aladdin at twice its fewest workers."""
    import time

    start = time.perf_counter()
    family = load_profile_family(cell.family)
    trace = workload_trace(cell.workload, data_dir, limit)
    if cell.rate_scale != 1.0:
        trace = scale_rate(trace, cell.rate_scale)
    ttft = TRACES.get(cell.workload, (None, None))[1] or slo_ttft_s
    base = Scenario.fitted(trace, family.profile(family.tps[0]), slo_ttft_s=ttft, slo_atgt_s=slo_atgt_s,
                           target_attainment=target)
    comparison = compare(base, family, target=target, max_gpus=max_gpus, autoscaled=autoscaled)
    twice = None
    aladdin = comparison.policies["aladdin"]
    if aladdin.min_gpus:
        at_tp = base.with_profile(family.profile(aladdin.tp))
        workers = 2 * aladdin.min_gpus // aladdin.tp
        twice = next((a for g, a in aladdin.curve if g == workers * aladdin.tp), None)
        if twice is None:
            twice = run(at_tp, "aladdin", workers).summary.attainment
    return CellResult(cell, ttft, comparison.to_dict(), twice, time.perf_counter() - start)


def geometric_mean(values: Sequence[float | None]) -> tuple[float | None, int]:
    """Geometric mean of the values that exist, and how many did not (None)."""
    present = [v for v in values if v]
    missing = len(values) - len(present)
    if not present:
        return None, missing
    return math.exp(sum(math.log(v) for v in present) / len(present)), missing


def run_matrix(cell_list: Sequence[Cell], *, jobs: int = 1, progress: Callable[[CellResult], None] | None = None,
               **options: Any) -> list[CellResult]:
    """Every cell, in order (`jobs` > 1: in that many processes); `progress` sees each result."""
    results: list[CellResult] = []
    if jobs <= 1:
        for cell in cell_list:
            results.append(run_cell(cell, **options))
            if progress:
                progress(results[-1])
        return results
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs) as pool:
        for result in pool.map(_run_cell_kwargs, [(cell, options) for cell in cell_list]):
            results.append(result)
            if progress:
                progress(result)
    return results


def _run_cell_kwargs(args: tuple[Cell, dict[str, Any]]) -> CellResult:
    cell, options = args
    return run_cell(cell, **options)


def summary(results: Sequence[CellResult]) -> dict[str, Any]:
    """The matrix's goals: geometric mean of Aladdin over the best same-TP baseline, the cells
    where Aladdin needs more GPUs than it, plateaus, planner misses beyond 20 %, autoscaled ratios."""
    ratio, missing = geometric_mean([r.aladdin_over_best for r in results])
    name = "autoscaled_gpu_hours_aladdin_vs_queue_length"
    autoscaled = [r.comparison["ratios"].get(name) for r in results]
    scaled = [r for r in results if r.comparison.get("autoscaled")]
    return {
        "cells": len(results),
        "geomean_aladdin_over_best_same_tp": ratio,
        "cells_without_ratio": missing,
        "cells_aladdin_above_best": [r.cell.label for r in results if (r.aladdin_over_best or 0) > 1],
        "cells_aladdin_never_reached": [r.cell.label for r in results if not r.aladdin_gpus],
        "cells_below_0_995_at_2x": [r.cell.label for r in results if r.aladdin_at_2x is not None and r.aladdin_at_2x < 0.995],
        "cells_planner_off_by_more_than_20pct": [
            r.cell.label for r in results if r.planner_over_aladdin is None or abs(r.planner_over_aladdin - 1) > 0.2
        ],
        # against the queue-length rule at its cheapest setting that meets the target
        "geomean_autoscaled_gpu_hours_ratio": geometric_mean(autoscaled)[0],
        "geomean_autoscaled_gpu_hours_ratio_default_setting": geometric_mean(
            [r.comparison["ratios"].get(f"{name}_default") for r in results])[0],
        "cells_queue_length_never_met_target": [
            r.cell.label for r in scaled if r.comparison["ratios"].get(name) is None],
        "cells_autoscaled_goal_not_met": [r.cell.label for r in scaled if not r.comparison["goals"].get(name)],
    }


def table_rows(results: Sequence[CellResult]) -> tuple[list[str], list[list[str]]]:
    """The header and one row per cell, as text."""
    header = ["workload", "family", "scale", "planner", "aladdin", "rr", "jsq", "p2c", "p2c-default",
              "aladdin@2x", "aladdin/best", "planner/aladdin",
              "autoscaled GPU-h vs queue-length at target (att a/q at its setting)"]
    fmt = lambda v, spec="": "—" if v is None else format(v, spec)  # noqa: E731
    rows = []
    for r in results:
        c = r.comparison
        pol = c["policies"]
        auto = c.get("autoscaled", {})
        ratio = c["ratios"].get("autoscaled_gpu_hours_aladdin_vs_queue_length")
        tuned = auto.get("p2c-at-target")
        att = (f" ({auto['aladdin']['attainment']:.4f}/{tuned['attainment']:.4f} at {tuned['target_ongoing_requests']:g})"
               if "aladdin" in auto and tuned else "")
        rows.append([
            r.cell.workload, r.cell.family, f"x{r.cell.rate_scale:g}", f"tp{c['planner']['tp']}/{c['planner']['gpus']}",
            *(fmt(pol[p]["min_gpus"]) for p in ("aladdin", "rr", "jsq", "p2c", "p2c-default")),
            fmt(r.aladdin_at_2x, ".4f"), fmt(r.aladdin_over_best, ".2f"), fmt(r.planner_over_aladdin, ".2f"),
            fmt(ratio, ".2f") + att,
        ])
    return header, rows
