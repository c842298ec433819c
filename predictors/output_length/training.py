"""Fit the output-length artifact: LightGBM point and p90 models on log reply length, p90
calibrated on held-out conversations, and the bucket-mean tables."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np

from predictors.output_length.artifact import Artifact, FeatureSettings, SplitSettings
from predictors.output_length.baseline import fit_bucket_means
from predictors.output_length.calibration import P90, Calibration, coverage_scale
from predictors.output_length.dataset import SPLIT_SEED, Example, Split, build_examples, split_by_conversation
from predictors.output_length.features import FeatureSpec, feature_matrix
from predictors.output_length.tokenizer import TokenCounter
from predictors.sharegpt import Conversation

CALIBRATION_FRACTION = 0.15
TEST_FRACTION = 0.2
# Huber on log length: a robust point estimate (absolute error is what the policy pays for).
POINT_PARAMS: dict = {
    "objective": "huber",
    "alpha": 0.7,
    "learning_rate": 0.05,
    "num_leaves": 127,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "seed": 0,
}
# The p90 only needs to rank well enough to be calibrated on held-out data, so it gets a much
# smaller forest: two large forests evict each other from the CPU cache on every request
# (measured: 195 us for both single-row calls against 105 us for each alone).
P90_PARAMS: dict = {
    **POINT_PARAMS,
    "objective": "quantile",
    "alpha": P90,
    "num_leaves": 31,
    "min_data_in_leaf": 40,
    "learning_rate": 0.1,
}
ROUNDS = 400
P90_ROUNDS = 150
# Bump when the parameters above change: the default artifact's file name carries it.
TRAINING_RECIPE = 2


@dataclass(frozen=True)
class LabelledRows:
    """Feature matrix, reply lengths and first-turn flags of a set of rows."""

    x: np.ndarray
    y: np.ndarray
    first_turn: np.ndarray
    input_tokens: np.ndarray

    @classmethod
    def of(cls, examples: list[Example], spec: FeatureSpec) -> LabelledRows:
        return cls(
            x=feature_matrix([e.request for e in examples], spec),
            y=np.array([e.reply_tokens for e in examples], dtype=np.float64),
            first_turn=np.array([e.first_turn for e in examples], dtype=bool),
            input_tokens=np.array([e.request.input_tokens for e in examples], dtype=np.int64),
        )

    def take(self, index: np.ndarray) -> LabelledRows:
        return LabelledRows(self.x[index], self.y[index], self.first_turn[index], self.input_tokens[index])


def fit_models(train: LabelledRows, threads: int, rounds: int = ROUNDS) -> tuple[lgb.Booster, lgb.Booster]:
    """Point and p90 boosters, both on log1p(reply tokens)."""
    target = np.log1p(train.y)
    data = lgb.Dataset(train.x, target, params={"verbose": -1}, free_raw_data=False)
    point = lgb.train({**POINT_PARAMS, "num_threads": threads}, data, num_boost_round=rounds)
    p90 = lgb.train({**P90_PARAMS, "num_threads": threads}, data, num_boost_round=min(rounds, P90_ROUNDS))
    return point, p90


def calibrate_p90(p90_model: lgb.Booster, rows: LabelledRows) -> Calibration:
    """Per-view p90 scales so that 90% of held-out replies are at or below the p90."""
    raw = np.expm1(p90_model.predict(rows.x))
    first = rows.first_turn
    return Calibration(
        p90_scale_first_turn=coverage_scale(rows.y[first], raw[first]),
        p90_scale_later_turns=coverage_scale(rows.y[~first], raw[~first]),
    )


def train_artifact(
    conversations: Iterable[Conversation],
    count_tokens: TokenCounter,
    tokenizer_fingerprint: str,
    spec: FeatureSpec = FeatureSpec(),
    threads: int = 2,
    seed: int = SPLIT_SEED,
) -> Artifact:
    """Build the dataset, split it by conversation, fit, calibrate; return the artifact."""
    started = time.monotonic()
    examples = build_examples(conversations, count_tokens)
    split = split_by_conversation(examples, seed, CALIBRATION_FRACTION, TEST_FRACTION)
    rows = LabelledRows.of(examples, spec)
    return fit_artifact(rows, split, spec, tokenizer_fingerprint, threads, seed, started)


def fit_artifact(
    rows: LabelledRows,
    split: Split,
    spec: FeatureSpec,
    tokenizer_fingerprint: str,
    threads: int = 2,
    seed: int = SPLIT_SEED,
    started: float | None = None,
    rounds: int = ROUNDS,
) -> Artifact:
    """Fit on split.train, calibrate on split.calibration (split.test is left untouched)."""
    started = time.monotonic() if started is None else started
    train = rows.take(split.train)
    point, p90 = fit_models(train, threads, rounds)
    first = train.first_turn
    return Artifact(
        tokenizer_fingerprint=tokenizer_fingerprint,
        features=FeatureSettings.of(spec),
        mean_model=point.model_to_string(),
        p90_model=p90.model_to_string(),
        calibration=calibrate_p90(p90, rows.take(split.calibration)),
        bucket_means_first_turn=fit_bucket_means(train.input_tokens[first], train.y[first]),
        bucket_means_all_turns=fit_bucket_means(train.input_tokens, train.y),
        split=SplitSettings(seed=seed, calibration_fraction=CALIBRATION_FRACTION, test_fraction=TEST_FRACTION),
        train_rows=int(len(split.train)),
        train_seconds=round(time.monotonic() - started, 1),
    )
