"""Online correction from served requests.

The served model is not the one that wrote ShareGPT's replies, so its lengths drift from the
training labels. `OnlineCorrector` keeps the newest (features, prediction, actual) records in a
bounded buffer, reports the error, and derives a corrected predictor: `recalibrate()` rescales
the point estimate and the p90 (cheap), `refit()` retrains the LightGBM models on the records.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from predictors.output_length.calibration import coverage_scale, median_ratio
from predictors.output_length.features import ChatInput, features
from predictors.output_length.predictor import GbmPredictor, LengthPredictor
from predictors.output_length.prediction import Prediction
from predictors.output_length.training import LabelledRows, calibrate_p90, fit_models

DEFAULT_CAPACITY = 4096
MIN_RECORDS = 50


@dataclass(frozen=True)
class ServedRecord:
    """One finished request: what was predicted and what the model really generated."""

    prediction: Prediction
    actual_tokens: int
    first_turn: bool
    input_tokens: int
    features: np.ndarray | None  # kept only for LightGBM predictors (needed by refit)


@dataclass(frozen=True)
class ErrorSummary:
    """Predicted-vs-actual error over the recorded window (export as metrics)."""

    n: int
    mae: float
    mean_signed_error: float  # predicted - actual: positive means over-prediction
    p90_coverage: float


class OnlineCorrector:
    """Bounded recorder of served requests with recalibration and refit. Thread-safe."""

    def __init__(self, predictor: LengthPredictor, capacity: int = DEFAULT_CAPACITY):
        self.predictor = predictor
        self._records: deque[ServedRecord] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def record(self, request: ChatInput, prediction: Prediction, actual_tokens: int) -> None:
        """Store one finished request (call off the request path, e.g. when the stream ends)."""
        row = features(request, self.predictor.spec)[0].astype(np.float32) if isinstance(self.predictor, GbmPredictor) else None
        item = ServedRecord(prediction, int(actual_tokens), not request.history, request.input_tokens, row)
        with self._lock:
            self._records.append(item)

    def records(self) -> list[ServedRecord]:
        with self._lock:
            return list(self._records)

    def error_summary(self) -> ErrorSummary:
        records = self.records()
        if not records:
            return ErrorSummary(n=0, mae=0.0, mean_signed_error=0.0, p90_coverage=0.0)
        actual = np.array([r.actual_tokens for r in records], dtype=np.float64)
        point = np.array([r.prediction.mean for r in records])
        p90 = np.array([r.prediction.upper for r in records])
        return ErrorSummary(
            n=len(records),
            mae=float(np.abs(point - actual).mean()),
            mean_signed_error=float((point - actual).mean()),
            p90_coverage=float(np.mean(actual <= p90)),
        )

    def recalibrate(self, min_records: int = MIN_RECORDS) -> LengthPredictor:
        """Rescale point and p90 so the recorded window is re-centred and 90% covered.

        Installs and returns the new predictor; with fewer than `min_records` records the
        current one is kept. The records stay, as they were predicted by the old scales: the
        factors are relative to those predictions.
        """
        records = self.records()
        if len(records) < min_records:
            return self.predictor
        actual = np.array([r.actual_tokens for r in records], dtype=np.float64)
        point = np.array([r.prediction.mean for r in records])
        p90 = np.array([r.prediction.upper for r in records])
        first = np.array([r.first_turn for r in records])
        with self._lock:
            self._records.clear()
            self.predictor = self.predictor.rescaled(
                median_ratio(actual, point),
                coverage_scale(actual[first], p90[first]),
                coverage_scale(actual[~first], p90[~first]),
            )
            return self.predictor

    def refit(self, base: LabelledRows | None = None, threads: int = 1, rounds: int = 200,
              min_records: int = MIN_RECORDS) -> LengthPredictor:
        """Retrain the LightGBM models on the records (plus `base` rows, e.g. the original
        training data, if given), calibrating p90 on every fifth record. Only for LightGBM
        predictors with at least `min_records` records; otherwise the current one is kept."""
        records = [r for r in self.records() if r.features is not None]
        if not isinstance(self.predictor, GbmPredictor) or len(records) < min_records:
            return self.predictor
        served = LabelledRows(
            x=np.stack([r.features for r in records]),
            y=np.array([r.actual_tokens for r in records], dtype=np.float64),
            first_turn=np.array([r.first_turn for r in records]),
            input_tokens=np.array([r.input_tokens for r in records]),
        )
        held_out = np.arange(len(records)) % 5 == 4
        train = served.take(np.flatnonzero(~held_out))
        if base is not None:
            train = LabelledRows(
                x=np.vstack([base.x, train.x]), y=np.concatenate([base.y, train.y]),
                first_turn=np.concatenate([base.first_turn, train.first_turn]),
                input_tokens=np.concatenate([base.input_tokens, train.input_tokens]),
            )
        point, p90 = fit_models(train, threads, rounds)
        refitted = GbmPredictor(self.predictor.spec, point, p90, calibrate_p90(p90, served.take(np.flatnonzero(held_out))))
        with self._lock:
            self._records.clear()
            self.predictor = refitted
            return refitted
