"""Validate operator-composed GPU profiles against splitwise's whole-iteration measurements
of Llama-2-70B (splitwise_perf_model/perf_model.csv, medians over repeated runs)."""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from predictors.latency.fit import mape_pct
from predictors.latency.profile import WorkerProfile, load_profile

# splitwise hardware name -> our family hardware name (the power-capped H100 rows are derived, not measured)
HARDWARE = {"a100-80gb": "a100", "h100-80gb": "h100"}
MODEL = ("llama2-70b", "llama-2-70b")


@dataclass(frozen=True)
class ValidationRow:
    """Error of one profile against the splitwise medians of its configuration."""

    family: str
    tp: int
    prefill_mape_pct: float
    decode_mape_pct: float
    prefill_points: int
    decode_points: int
    prefill_bias_pct: float
    decode_bias_pct: float
    prefill_median_ape_pct: float
    decode_median_ape_pct: float

    def describe(self) -> str:
        return (
            f"splitwise {self.family} tp{self.tp}: prefill MAPE {self.prefill_mape_pct:.1f}% "
            f"(median {self.prefill_median_ape_pct:.1f}%, bias {self.prefill_bias_pct:+.1f}%, n={self.prefill_points}), "
            f"decode MAPE {self.decode_mape_pct:.1f}% (median {self.decode_median_ape_pct:.1f}%, "
            f"bias {self.decode_bias_pct:+.1f}%, n={self.decode_points})"
        )


def _median_ape_pct(predicted: list[float], measured: list[float]) -> float:
    # Robust to the odd splitwise row (e.g. a 64 x 512-token prompt batch faster than 32 x 512).
    return 100.0 * statistics.median(abs(p - m) / m for p, m in zip(predicted, measured, strict=True))


def _bias_pct(predicted: list[float], measured: list[float]) -> float:
    return 100.0 * statistics.mean((p - m) / m for p, m in zip(predicted, measured, strict=True))


def splitwise_medians(path: Path) -> dict[tuple[str, int], list[tuple[int, int, int, float, float]]]:
    """(hardware, tp) -> [(prompt, batch, output tokens, prompt_time s, token_time s)], medians."""
    groups: dict[tuple[str, int, int, int, int], list[tuple[float, float]]] = defaultdict(list)
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            if r["model"] != MODEL[0] or r["hardware"] not in HARDWARE:
                continue
            key = (HARDWARE[r["hardware"]], int(r["tensor_parallel"]), int(r["prompt_size"]), int(r["batch_size"]), int(r["token_size"]))
            groups[key].append((float(r["prompt_time"]) / 1e3, float(r["token_time"]) / 1e3))
    out: dict[tuple[str, int], list[tuple[int, int, int, float, float]]] = defaultdict(list)
    for (hw, tp, prompt, batch, tokens), runs in sorted(groups.items()):
        out[hw, tp].append(
            (prompt, batch, tokens, statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        )
    return out


def validate_profile(profile: WorkerProfile, points: list[tuple[int, int, int, float, float]]) -> ValidationRow:
    """Prefill: a batch of `batch` prompts of `prompt` tokens. Decode: the mean step over the
    run, at the mean context prompt + output/2 per request."""
    p_pred = [profile.prefill_time_s([prompt] * batch) for prompt, batch, _, _, _ in points]
    p_meas = [p[3] for p in points]
    d_pred = [profile.decode_step_s(batch, batch * (prompt + tokens // 2)) for prompt, batch, tokens, _, _ in points]
    d_meas = [p[4] for p in points]
    return ValidationRow(
        family=profile.family,
        tp=profile.tp,
        prefill_mape_pct=mape_pct(p_pred, p_meas),
        decode_mape_pct=mape_pct(d_pred, d_meas),
        prefill_points=len(points),
        decode_points=len(points),
        prefill_bias_pct=_bias_pct(p_pred, p_meas),
        decode_bias_pct=_bias_pct(d_pred, d_meas),
        prefill_median_ape_pct=_median_ape_pct(p_pred, p_meas),
        decode_median_ape_pct=_median_ape_pct(d_pred, d_meas),
    )


def validate_family(splitwise_csv: Path, profiles_dir: Path) -> Iterator[ValidationRow]:
    """Validate every llama-2-70b profile under `profiles_dir` that splitwise has data for."""
    medians = splitwise_medians(splitwise_csv)
    for (hw, tp), points in sorted(medians.items()):
        path = profiles_dir / f"{MODEL[1]}-{hw}" / f"tp{tp}.json"
        if path.exists():
            yield validate_profile(load_profile(path), points)
