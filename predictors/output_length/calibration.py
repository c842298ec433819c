"""Calibration of the upper quantile and of the point estimate by multiplicative scales."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

P90 = 0.9


class Calibration(BaseModel):
    """Scales applied to model outputs; p90 is scaled separately for first and later turns."""

    mean_scale: float = 1.0
    p90_scale_first_turn: float = 1.0
    p90_scale_later_turns: float = 1.0

    def p90_scale(self, first_turn: bool) -> float:
        return self.p90_scale_first_turn if first_turn else self.p90_scale_later_turns


def coverage_scale(actual: np.ndarray, predicted: np.ndarray, target: float = P90) -> float:
    """Scale s such that a fraction `target` of `actual` is <= s * `predicted`; 1 if no data."""
    actual = np.asarray(actual, dtype=np.float64)
    predicted = np.maximum(np.asarray(predicted, dtype=np.float64), 1e-6)
    if actual.size == 0:
        return 1.0
    return float(np.quantile(actual / predicted, target, method="higher"))


def median_ratio(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Median of actual / predicted: the scale that re-centres a point estimate fitted for
    absolute error; 1 if no data."""
    actual = np.asarray(actual, dtype=np.float64)
    predicted = np.maximum(np.asarray(predicted, dtype=np.float64), 1e-6)
    if actual.size == 0:
        return 1.0
    return float(np.median(actual / predicted))
