"""Markdown tables of a `make bench` result folder (suite.json, fidelity.json), with the goals
evaluated from the numbers: at the highest load where Ray Serve LLM's default router still
meets 90% of SLOs, Aladdin's attainment; beyond it, Aladdin's goodput over Ray Serve LLM's.
With Ray Serve LLM's prefix-aware router among the systems (`make bench-prefix`): Aladdin's
TTFT p50 against its at the highest load where both meet 90%, goodput beyond, and the prefix
hits Aladdin's placement predicted against those the engines reported."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

REFERENCE = "rayllm"  # Ray Serve LLM, default router
PREFIX_REFERENCE = "rayllm-prefix"  # Ray Serve LLM, PrefixCacheAffinityRouter
OURS = "aladdin"
Groups = dict[tuple[str, float], list[dict[str, Any]]]  # (system, load) -> its runs


def _group(runs: list[dict[str, Any]]) -> Groups:
    groups: Groups = defaultdict(list)
    for run in runs:
        groups[(run["system"], run["rate_scale"])].append(run)
    return groups


def _spread(values: list[float], fmt: str) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def runs_table(runs: list[dict[str, Any]]) -> str:
    """One row per system and load: mean over repetitions, (min-max) where repeated."""
    lines = ["| system | load | offered req/s | reps | attainment | goodput req/s | TTFT p50 / p99 ms | "
             "ATGT p50 / p99 ms | output tok/s | failed or refused |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (system, k), group in sorted(_group(runs).items(), key=lambda item: (item[0][1], item[0][0])):
        def col(key: str) -> list[float]:
            return [r[key] for r in group if r.get(key) is not None]
        lines.append(
            f"| {system} | x{k:g} | {statistics.fmean(col('offered_rate_per_s')):.2f} | {len(group)} | "
            f"{_spread(col('attainment'), '.3f')} | {_spread(col('goodput_per_s'), '.2f')} | "
            f"{statistics.fmean(col('ttft_ms_p50')):.0f} / {statistics.fmean(col('ttft_ms_p99')):.0f} | "
            f"{statistics.fmean(col('atgt_ms_p50')):.1f} / {statistics.fmean(col('atgt_ms_p99')):.1f} | "
            f"{statistics.fmean(col('output_tokens_per_s')):.0f} | {sum(col('failed'))} |"
        )
    return "\n".join(lines)


def _mean(groups: Groups, system: str, k: float, key: str) -> float | None:
    values = [r[key] for r in groups.get((system, k), []) if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def _goodput_beyond(groups: Groups, loads: list[float], below: list[float], reference: str) -> list[str]:
    """Aladdin's goodput against `reference`'s at each load past those in `below` (goal >= 1.3x)."""
    out = []
    for k in loads:
        if below and k <= max(below):
            continue
        ours, ref = _mean(groups, OURS, k, "goodput_per_s"), _mean(groups, reference, k, "goodput_per_s")
        if ours is None or ref is None:
            continue
        ratio = ours / ref if ref > 0 else float("inf")
        out.append(f"x{k:g}: goodput {OURS} {ours:.2f} vs {reference} {ref:.2f} req/s = {ratio:.2f}x "
                   f"(goal >= 1.3x: {'met' if ratio >= 1.3 else 'not met'})")
    return out


def goals(runs: list[dict[str, Any]]) -> list[str]:
    """The issue's two goals, evaluated on mean attainment and goodput per load."""
    groups = _group(runs)
    loads = sorted({k for _, k in groups})
    ok_loads = [k for k in loads if (a := _mean(groups, REFERENCE, k, "attainment")) is not None and a >= 0.9]
    out = []
    if ok_loads:
        k = max(ok_loads)
        ours = _mean(groups, OURS, k, "attainment")
        out.append(f"highest load where {REFERENCE} meets >= 90% of SLOs: x{k:g} ({REFERENCE} "
                   f"{_mean(groups, REFERENCE, k, 'attainment'):.3f}); {OURS} there: "
                   f"{'-' if ours is None else f'{ours:.3f}'} (goal >= 0.99: "
                   f"{'met' if ours is not None and ours >= 0.99 else 'not met'})")
    else:
        out.append(f"{REFERENCE} met 90% of SLOs at no load measured")
    return out + _goodput_beyond(groups, loads, ok_loads, REFERENCE)


def prefix_goals(runs: list[dict[str, Any]]) -> list[str]:
    """Against the prefix-aware router: TTFT p50 at the highest load where both meet 90% of
    SLOs (goal <= 0.7x), goodput at the loads beyond (goal >= 1.3x)."""
    groups = _group(runs)
    loads = sorted({k for s, k in groups if s == PREFIX_REFERENCE})
    both = [k for k in loads
            if min(_mean(groups, OURS, k, "attainment") or 0, _mean(groups, PREFIX_REFERENCE, k, "attainment") or 0) >= 0.9]
    out = []
    if both:
        k = max(both)
        ours, ref = _mean(groups, OURS, k, "ttft_ms_p50"), _mean(groups, PREFIX_REFERENCE, k, "ttft_ms_p50")
        out.append(f"highest load where {OURS} and {PREFIX_REFERENCE} both meet >= 90% of SLOs: x{k:g}; TTFT p50 "
                   f"{ours:.0f} vs {ref:.0f} ms = {ours / ref:.2f}x (goal <= 0.7x: {'met' if ours <= 0.7 * ref else 'not met'})")
    else:
        out.append(f"{OURS} and {PREFIX_REFERENCE} both met 90% of SLOs at no load measured")
    return out + _goodput_beyond(groups, loads, both, PREFIX_REFERENCE)


def prefix_hits_table(runs: list[dict[str, Any]]) -> str | None:
    """Per Aladdin run, the prompt tokens of its measured requests and the prefix hits
    placement predicted against those the engines reported (the placement actor's counts are
    cumulative over a deployment: each run's are the difference from the one before)."""
    lines = ["| run | prompt tokens | predicted hits | engine hits | predicted / engine |", "|---|---|---|---|---|"]
    previous: dict[str, dict[str, int]] = {}
    rows = 0
    for run in runs:
        hits = (run.get("placement_closed_loop") or {}).get("prefix_hits")
        if run["system"] != OURS or not hits:
            continue
        totals = {key: sum(h[key] - previous.get(w, {}).get(key, 0) for w, h in hits.items())
                  for key in ("prompt_tokens", "predicted_tokens", "engine_tokens")}
        previous = hits
        ratio = totals["predicted_tokens"] / totals["engine_tokens"] if totals["engine_tokens"] else float("nan")
        lines.append(f"| x{run['rate_scale']:g} rep{run['rep']} | {totals['prompt_tokens']} | "
                     f"{totals['predicted_tokens']} | {totals['engine_tokens']} | {ratio:.3f} |")
        rows += 1
    return "\n".join(lines) if rows else None


def fidelity_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| run | policy | offered req/s | requests (replayed) | TTFT median rel. error (sim/real) | "
             "ATGT median rel. error (sim/real) | attainment real / sim (gap, points) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        name = "/".join(Path(r["run"]).parts[-3:])
        # runs replayed before the ratios were reported have none
        ttft_ratio, atgt_ratio = r.get("ttft_median_ratio", math.nan), r.get("atgt_median_ratio", math.nan)
        lines.append(
            f"| {name} | {r['policy']} | {r['offered_rate_per_s']:.2f} | {r['requests']} ({r['compared']}) | "
            f"{r['ttft_median_rel_error']:.1%} ({ttft_ratio:.2f}) | {r['atgt_median_rel_error']:.1%} ({atgt_ratio:.2f}) | "
            f"{r['real_attainment']:.3f} / {r['sim_attainment']:.3f} ({r['attainment_gap_points']:.1f}) |"
        )
    return "\n".join(lines)


def report(out_dir: str | Path) -> str:
    """The markdown for a `make bench` folder."""
    out = Path(out_dir)
    runs = json.loads((out / "suite.json").read_text())["runs"]
    parts = ["### Runs", "", runs_table(runs), "", "### Goals", ""]
    parts += [f"- {line}" for line in goals(runs)]
    if any(r["system"] == PREFIX_REFERENCE for r in runs):
        parts += [f"- {line}" for line in prefix_goals(runs)]
    hits = prefix_hits_table(runs)
    if hits:
        parts += ["", "### Prefix cache: predicted vs engine-reported hits", "", hits]
    fidelity = out / "fidelity.json"
    if fidelity.exists():
        parts += ["", "### Simulator fidelity", "", fidelity_table(json.loads(fidelity.read_text()))]
    return "\n".join(parts) + "\n"
