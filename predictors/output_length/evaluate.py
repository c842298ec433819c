"""Evaluation on the held-out test conversations: accuracy against the bucket-mean baseline,
ranking quality, p90 coverage, and the cost of one prediction."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel
from scipy.stats import kendalltau

from predictors.output_length.artifact import Artifact
from predictors.output_length.baseline import fit_bucket_means
from predictors.output_length.dataset import Example, split_by_conversation
from predictors.output_length.predictor import GbmPredictor
from predictors.output_length.training import LabelledRows


class ViewMetrics(BaseModel):
    n_test: int
    mae: float
    baseline_mae: float
    mae_ratio: float
    kendall_tau: float
    p90_coverage: float
    mean_signed_error: float


class EvalReport(BaseModel):
    first_turn: ViewMetrics
    all_turns: ViewMetrics
    predict_us_p50: float


def view_metrics(y: np.ndarray, point: np.ndarray, p90: np.ndarray, baseline: np.ndarray) -> ViewMetrics:
    mae = float(np.abs(point - y).mean())
    baseline_mae = float(np.abs(baseline - y).mean())
    return ViewMetrics(
        n_test=int(y.size),
        mae=round(mae, 2),
        baseline_mae=round(baseline_mae, 2),
        mae_ratio=round(mae / baseline_mae, 4),
        kendall_tau=round(float(kendalltau(point, y).statistic), 4),
        p90_coverage=round(float(np.mean(y <= p90)), 4),
        mean_signed_error=round(float(np.mean(point - y)), 2),
    )


def predict_latency_us(
    predictor: GbmPredictor, examples: Sequence[Example], token_ids: Callable[[str], list[int]], n: int = 300
) -> float:
    """Median wall time of one `predict(text, token ids, history)` call (features + models)."""
    sample = list(examples[:n])
    ids = [token_ids(e.request.prompt) for e in sample]
    for e, t in zip(sample[:20], ids[:20]):  # warm caches before timing
        predictor.predict(e.request.prompt, t, e.request.history)
    times = []
    for e, t in zip(sample, ids):
        start = time.perf_counter()
        predictor.predict(e.request.prompt, t, e.request.history)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6)


def evaluate(
    artifact: Artifact, examples: list[Example], token_ids: Callable[[str], list[int]]
) -> EvalReport:
    """Re-create the artifact's split of `examples` and score the test conversations."""
    s = artifact.split
    split = split_by_conversation(examples, s.seed, s.calibration_fraction, s.test_fraction)
    predictor = GbmPredictor.from_artifact(artifact)
    spec = artifact.features.spec()
    test_examples = [examples[i] for i in split.test]
    # Timed first, before batch prediction starts LightGBM's OpenMP thread team, whose idle
    # threads would compete with the single-row calls for the cores.
    predict_us = predict_latency_us(predictor, test_examples, token_ids)
    test = LabelledRows.of(test_examples, spec)
    point, p90 = predictor.predict_rows(test.x, test.first_turn)

    train_y = np.array([examples[i].reply_tokens for i in split.train], dtype=np.float64)
    train_in = np.array([examples[i].request.input_tokens for i in split.train])
    train_first = np.array([examples[i].first_turn for i in split.train])
    # Baselines are refitted here from the train split, independent of the artifact's tables.
    first_table = fit_bucket_means(train_in[train_first], train_y[train_first])
    all_table = fit_bucket_means(train_in, train_y)
    base_first = np.array([first_table.lookup(int(n)).mean for n in test.input_tokens])
    base_all = np.array([all_table.lookup(int(n)).mean for n in test.input_tokens])
    first = test.first_turn
    return EvalReport(
        first_turn=view_metrics(test.y[first], point[first], p90[first], base_first[first]),
        all_turns=view_metrics(test.y, point, p90, base_all),
        predict_us_p50=round(predict_us, 1),
    )
