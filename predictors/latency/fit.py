"""Fitting the latency models: non-negative least squares on relative error, held-out MAPE.

Coefficients are constrained to be >= 0 so more tokens never predict less time. Each row is
divided by its measured time, so the fit minimises relative (not absolute) error: a 5 ms
decode step matters as much as a 2 s prefill.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from scipy.optimize import nnls

from predictors.latency.profile import DecodeModel, FitReport, PrefillModel

T = TypeVar("T")


@dataclass(frozen=True)
class PrefillSample:
    """One measured prefill: the batch's prompt lengths and its time in seconds."""

    input_lens: tuple[int, ...]
    time_s: float


@dataclass(frozen=True)
class DecodeSample:
    """One measured decode step: batch size, total context tokens, time in seconds."""

    batch_size: int
    context_tokens: int
    time_s: float


def prefill_features(input_lens: Sequence[int]) -> list[float]:
    """Regressors of the prefill model: [1, prompts, sum(l), sum(l^2)]."""
    return [1.0, float(len(input_lens)), float(sum(input_lens)), float(sum(n * n for n in input_lens))]


def decode_features(batch_size: int, context_tokens: int) -> list[float]:
    """Regressors of the decode model: [1, batch_size, context_tokens]."""
    return [1.0, float(batch_size), float(context_tokens)]


def nnls_relative(features: Sequence[Sequence[float]], times: Sequence[float]) -> list[float]:
    """Non-negative coefficients minimising sum(((x . c) - y) / y)^2."""
    x = np.asarray(features, dtype=float)
    y = np.asarray(times, dtype=float)
    if x.ndim != 2 or len(x) < x.shape[1]:
        raise ValueError(f"need at least {x.shape[-1]} samples to fit {x.shape[-1]} coefficients, got {len(x)}")
    if np.any(y <= 0):
        raise ValueError("measured times must be positive")
    # Scale columns to comparable magnitude (sum(l^2) is ~1e7 where 1 is 1): keeps NNLS well conditioned.
    weighted = x / y[:, None]
    scale = np.abs(weighted).max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(weighted / scale, np.ones_like(y))
    return [float(c) for c in coef / scale]


def fit_prefill(samples: Sequence[PrefillSample]) -> PrefillModel:
    """Fit c0 + cp * prompts + c1 * sum(l) + c2 * sum(l^2) to measured prefill times."""
    c = nnls_relative([prefill_features(s.input_lens) for s in samples], [s.time_s for s in samples])
    return PrefillModel(c0_s=c[0], cp_s_per_prompt=c[1], c1_s_per_token=c[2], c2_s_per_token_sq=c[3])


def fit_decode(samples: Sequence[DecodeSample]) -> DecodeModel:
    """Fit d0 + d1 * batch + d2 * context to measured decode-step times."""
    c = nnls_relative([decode_features(s.batch_size, s.context_tokens) for s in samples], [s.time_s for s in samples])
    return DecodeModel(d0_s=c[0], d1_s_per_seq=c[1], d2_s_per_context_token=c[2])


def mape_pct(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error, in percent."""
    if len(predicted) != len(measured) or not measured:
        raise ValueError("need equally many predicted and measured values, at least one")
    return 100.0 * sum(abs(p - m) / m for p, m in zip(predicted, measured, strict=True)) / len(measured)


def split_held_out(samples: Sequence[T], held_out_every: int) -> tuple[list[T], list[T]]:
    """Deterministic split: every `held_out_every`-th sample (from index 1) is held out.

    Samples are expected in grid order, so the held-out points interleave the fitted ones and
    test interpolation across the whole grid rather than extrapolation off one end."""
    if held_out_every < 2:
        raise ValueError("held_out_every must be >= 2")
    fitted = [s for i, s in enumerate(samples) if i % held_out_every != 1]
    held = [s for i, s in enumerate(samples) if i % held_out_every == 1]
    return fitted, held


@dataclass(frozen=True)
class FittedLatency:
    """Fitted prefill and decode models with their held-out error."""

    prefill: PrefillModel
    decode: DecodeModel
    report: FitReport


def fit_latency(
    prefill: Sequence[PrefillSample], decode: Sequence[DecodeSample], held_out_every: int = 4
) -> FittedLatency:
    """Fit both models on the fitted split and score those same models on the held-out split."""
    p_fit, p_held = split_held_out(prefill, held_out_every)
    d_fit, d_held = split_held_out(decode, held_out_every)
    p_model = fit_prefill(p_fit)
    d_model = fit_decode(d_fit)
    report = FitReport(
        prefill_mape_pct=mape_pct([p_model.time_s(s.input_lens) for s in p_held], [s.time_s for s in p_held]),
        decode_mape_pct=mape_pct(
            [d_model.step_s(s.batch_size, s.context_tokens) for s in d_held], [s.time_s for s in d_held]
        ),
        prefill_points=len(prefill),
        decode_points=len(decode),
        held_out_fraction=round((len(p_held) + len(d_held)) / (len(prefill) + len(decode)), 4),
    )
    return FittedLatency(prefill=p_model, decode=d_model, report=report)
