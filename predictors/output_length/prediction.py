"""The predictor's answer for one request."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prediction:
    """Predicted output length in tokens: a point estimate and an upper estimate.

    `mean` is the point estimate the placement policy plans with (fitted for absolute error on
    log length, so it sits near the conditional median); `upper` is the calibrated 90th
    percentile, never below it (placement reserves KV for it: `RunningRequest.pred_upper`).
    """

    mean: float
    upper: float

    def __post_init__(self) -> None:
        mean = max(float(self.mean), 0.0)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "upper", max(float(self.upper), mean))
