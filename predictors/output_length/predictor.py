"""Predictors that answer `predict(prompt, token_ids, history) -> Prediction`.

`load_predictor` never raises: a missing or unusable artifact gives a warning and the
bucket-mean fallback (the artifact's own table when it can be read, else a flat default).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import lightgbm as lgb
import numpy as np

from predictors.output_length.artifact import Artifact, load_artifact
from predictors.output_length.baseline import BucketMeans, default_bucket_means
from predictors.output_length.calibration import Calibration
from predictors.output_length.features import ChatInput, FeatureSpec, PastTurn, features
from predictors.output_length.prediction import Prediction
from predictors.output_length.single_row import SingleRowPredictor


def chat_input(prompt: str, token_ids: Sequence[int] | int, history: Sequence[PastTurn] = ()) -> ChatInput:
    """Build the predictor's input from the latest user message, its token ids (or count)
    and the earlier turns."""
    n_tokens = token_ids if isinstance(token_ids, int) else len(token_ids)
    return ChatInput(prompt=prompt, prompt_tokens=n_tokens, history=tuple(history))


class LengthPredictor(Protocol):
    """What the server calls once per request."""

    def predict_input(self, request: ChatInput) -> Prediction: ...

    def predict(self, prompt: str, token_ids: Sequence[int] | int, history: Sequence[PastTurn] = ()) -> Prediction: ...

    def rescaled(self, mean_factor: float, p90_factor_first_turn: float, p90_factor_later_turns: float) -> LengthPredictor: ...


class BucketMeanPredictor:
    """The paper's predictor: mean reply length per log2 bucket of the input length."""

    def __init__(self, first_turn: BucketMeans, all_turns: BucketMeans, calibration: Calibration | None = None):
        self.first_turn = first_turn
        self.all_turns = all_turns
        self.calibration = calibration or Calibration()

    def predict_input(self, request: ChatInput) -> Prediction:
        first = not request.history
        table = self.first_turn if first else self.all_turns
        raw = table.lookup(request.input_tokens)
        return Prediction(
            mean=raw.mean * self.calibration.mean_scale,
            upper=raw.upper * self.calibration.p90_scale(first),
        )

    def predict(self, prompt: str, token_ids: Sequence[int] | int, history: Sequence[PastTurn] = ()) -> Prediction:
        return self.predict_input(chat_input(prompt, token_ids, history))

    def rescaled(self, mean_factor: float, p90_factor_first_turn: float, p90_factor_later_turns: float) -> BucketMeanPredictor:
        return BucketMeanPredictor(self.first_turn, self.all_turns, _rescale(self.calibration, mean_factor, p90_factor_first_turn, p90_factor_later_turns))


class GbmPredictor:
    """LightGBM point and p90 models on cheap features, with multiplicative calibration."""

    def __init__(self, spec: FeatureSpec, mean_model: lgb.Booster, p90_model: lgb.Booster, calibration: Calibration):
        self.spec = spec
        self.mean_model = mean_model
        self.p90_model = p90_model
        self.calibration = calibration
        self._single_mean = SingleRowPredictor(mean_model, spec.n_features)
        self._single_p90 = SingleRowPredictor(p90_model, spec.n_features)

    @classmethod
    def from_artifact(cls, artifact: Artifact) -> GbmPredictor:
        spec = artifact.features.spec()
        mean_model = lgb.Booster(model_str=artifact.mean_model)
        p90_model = lgb.Booster(model_str=artifact.p90_model)
        for model in (mean_model, p90_model):
            if model.num_feature() != spec.n_features:
                raise ValueError(f"model has {model.num_feature()} features, settings say {spec.n_features}")
        return cls(spec, mean_model, p90_model, artifact.calibration)

    def raw_predict(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Uncalibrated (point, p90) in tokens for feature rows."""
        mean = np.expm1(self.mean_model.predict(rows))
        p90 = np.expm1(self.p90_model.predict(rows))
        return np.maximum(mean, 0.0), np.maximum(p90, 0.0)

    def predict_rows(self, rows: np.ndarray, first_turn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated (point, p90) for feature rows; `first_turn` marks rows without history."""
        mean, p90 = self.raw_predict(rows)
        c = self.calibration
        scale = np.where(first_turn, c.p90_scale_first_turn, c.p90_scale_later_turns)
        mean = mean * c.mean_scale
        return mean, np.maximum(p90 * scale, mean)

    def predict_input(self, request: ChatInput) -> Prediction:
        row = features(request, self.spec)[0]
        mean = math.expm1(self._single_mean.predict(row))
        p90 = math.expm1(self._single_p90.predict(row))
        c = self.calibration
        return Prediction(mean=mean * c.mean_scale, upper=p90 * c.p90_scale(not request.history))

    def predict(self, prompt: str, token_ids: Sequence[int] | int, history: Sequence[PastTurn] = ()) -> Prediction:
        return self.predict_input(chat_input(prompt, token_ids, history))

    def rescaled(self, mean_factor: float, p90_factor_first_turn: float, p90_factor_later_turns: float) -> GbmPredictor:
        return GbmPredictor(
            self.spec, self.mean_model, self.p90_model,
            _rescale(self.calibration, mean_factor, p90_factor_first_turn, p90_factor_later_turns),
        )


def _rescale(c: Calibration, mean_factor: float, first: float, later: float) -> Calibration:
    for factor in (mean_factor, first, later):
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"calibration factors must be finite and positive, got {factor}")
    return Calibration(
        mean_scale=c.mean_scale * mean_factor,
        p90_scale_first_turn=c.p90_scale_first_turn * first,
        p90_scale_later_turns=c.p90_scale_later_turns * later,
    )


def fallback_predictor() -> BucketMeanPredictor:
    """Flat default, available with no data and no artifact."""
    table = default_bucket_means()
    return BucketMeanPredictor(table, table)


def load_predictor(path: Path | None) -> LengthPredictor:
    """The artifact's LightGBM predictor; on any problem a warning and a bucket-mean fallback."""
    if path is None or not Path(path).exists():
        warnings.warn(f"output-length artifact {path} is missing; using the bucket-mean fallback", stacklevel=2)
        return fallback_predictor()
    try:
        artifact = load_artifact(Path(path))
    except Exception as exc:  # corrupt JSON, wrong schema, unreadable file: never stop the server
        warnings.warn(f"output-length artifact {path} is unusable ({exc}); using the bucket-mean fallback", stacklevel=2)
        return fallback_predictor()
    try:
        return GbmPredictor.from_artifact(artifact)
    except Exception as exc:  # the JSON is fine but a model string is not: keep its tables
        warnings.warn(f"output-length models in {path} are unusable ({exc}); using its bucket-mean tables", stacklevel=2)
        return BucketMeanPredictor(artifact.bucket_means_first_turn, artifact.bucket_means_all_turns)
