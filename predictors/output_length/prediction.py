"""The predictor's answer for one request."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prediction:
    """Predicted output length in tokens: a point estimate and a calibrated 90th percentile.

    `mean` is the point estimate the placement policy plans with (fitted for absolute error on
    log length, so it sits near the conditional median); `p90` is never below it.
    """

    mean: float
    p90: float

    def __post_init__(self) -> None:
        mean = max(float(self.mean), 0.0)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "p90", max(float(self.p90), mean))
