"""Predicted output lengths for trace requests.

Traces carry lengths but no text, so the simulator cannot run the real predictor; a length
model stands in for it and says what placement would have been told at arrival: a point
estimate (`pred_mean`) and an upper quantile (`pred_upper`).

- `oracle`: the true length for both (an upper bound on what prediction can give).
- `noisy`: the true length times a log-normal error, sized so the mean absolute error is
  `mae_ratio` x the true length and the upper estimate covers the true length with
  probability `coverage` (what a calibrated predictor of that quality gives).
- `bucket` (default): the paper's baseline, the mean and p90 of finished requests' reply
  lengths per log2 bucket of the prompt length, learned online from completions (before any
  completion in a bucket, the nearest fitted bucket below it, else the predictor's fallback).
"""

from __future__ import annotations

import bisect
import math
import random
from typing import Protocol

from scipy.optimize import brentq
from scipy.stats import norm

from predictors.output_length.baseline import FALLBACK_MEAN_TOKENS, FALLBACK_P90_TOKENS, log2_bucket

LENGTH_MODELS = ("oracle", "noisy", "bucket")
DEFAULT_LENGTH_MODEL = "bucket"


class LengthModel(Protocol):
    """What the output-length predictor would have said about a trace request."""

    name: str

    def predict(self, input_len: int, output_len: int) -> tuple[float, float]:
        """(pred_mean, pred_upper) for a request, 0 < mean <= upper. `output_len` is the true
        length; only models that simulate a predictor's error may look at it."""
        ...

    def observe(self, input_len: int, output_len: int) -> None:
        """A request finished with this true length (online models learn from it)."""
        ...


class OracleLengths:
    """Exact lengths."""

    name = "oracle"

    def predict(self, input_len: int, output_len: int) -> tuple[float, float]:
        return float(output_len), float(output_len)

    def observe(self, input_len: int, output_len: int) -> None:
        pass


def _sigma_for_mae(mae_ratio: float) -> float:
    # For Z ~ N(0, s^2): E|exp(Z) - 1| = exp(s^2 / 2) * (2 Phi(s) - 1), increasing in s.
    return brentq(lambda s: math.exp(s * s / 2) * (2 * norm.cdf(s) - 1) - mae_ratio, 1e-9, 10.0)


class NoisyLengths:
    """True length x exp(N(0, sigma^2)); the upper estimate is the mean x exp(z_q sigma)."""

    name = "noisy"

    def __init__(self, mae_ratio: float = 0.3, coverage: float = 0.9, seed: int = 0):
        if not 0 < mae_ratio < 5 or not 0.5 <= coverage < 1:
            raise ValueError("need 0 < mae_ratio < 5 and 0.5 <= coverage < 1")
        self.sigma = _sigma_for_mae(mae_ratio)
        # P(true <= upper) = P(Z >= -z sigma) = Phi(z) = coverage
        self._upper_factor = math.exp(norm.ppf(coverage) * self.sigma)
        self._rng = random.Random(seed)

    def predict(self, input_len: int, output_len: int) -> tuple[float, float]:
        mean = max(1.0, output_len * math.exp(self._rng.gauss(0.0, self.sigma)))
        return mean, mean * self._upper_factor

    def observe(self, input_len: int, output_len: int) -> None:
        pass


class BucketMeanLengths:
    """Mean and p90 per log2 prompt-length bucket, from the requests finished so far."""

    name = "bucket"

    def __init__(self) -> None:
        self._sorted: dict[int, list[int]] = {}  # bucket -> reply lengths, sorted
        self._sums: dict[int, int] = {}

    def predict(self, input_len: int, output_len: int) -> tuple[float, float]:
        bucket = log2_bucket(input_len)
        while bucket >= 0 and bucket not in self._sorted:
            bucket -= 1
        if bucket < 0:
            return FALLBACK_MEAN_TOKENS, FALLBACK_P90_TOKENS
        lengths = self._sorted[bucket]
        mean = max(1.0, self._sums[bucket] / len(lengths))
        p90 = float(lengths[int(0.9 * (len(lengths) - 1))])
        return mean, max(mean, p90)

    def observe(self, input_len: int, output_len: int) -> None:
        bucket = log2_bucket(input_len)
        bisect.insort(self._sorted.setdefault(bucket, []), output_len)
        self._sums[bucket] = self._sums.get(bucket, 0) + output_len


def make_length_model(name: str, *, seed: int = 0, mae_ratio: float = 0.3, coverage: float = 0.9) -> LengthModel:
    """A length model by name (`oracle`, `noisy`, `bucket`); `noisy` uses mae_ratio, coverage
    and seed."""
    if name == "oracle":
        return OracleLengths()
    if name == "noisy":
        return NoisyLengths(mae_ratio, coverage, seed)
    if name == "bucket":
        return BucketMeanLengths()
    raise ValueError(f"unknown length model {name!r}; available: {', '.join(LENGTH_MODELS)}")
