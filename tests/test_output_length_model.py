"""Fitting, calibration, artifact round-trips, fallbacks and online correction."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictors.output_length import (
    BucketMeanPredictor, GbmPredictor, OnlineCorrector, PastTurn, load_artifact, load_predictor, save_artifact,
)
from predictors.output_length.baseline import fit_bucket_means, log2_bucket
from predictors.output_length.calibration import coverage_scale
from predictors.output_length.dataset import build_examples, split_by_conversation
from predictors.output_length.features import ChatInput, FeatureSpec
from predictors.output_length.training import LabelledRows, fit_artifact
from predictors.sharegpt import Conversation, Turn

SPEC = FeatureSpec(hash_buckets=16, head_words=16, tail_words=8, scan_chars=200)


def _synthetic_conversations(n: int = 300) -> list[Conversation]:
    """Replies whose length follows the prompt: 'long' asks for many words, 'short' for few."""
    rng = np.random.default_rng(0)
    convs = []
    for i in range(n):
        kind = rng.choice(["long", "short"])
        reply_words = int(rng.integers(80, 120) if kind == "long" else rng.integers(2, 10))
        prompt = f"please give a {kind} answer " + "x " * int(rng.integers(1, 30))
        convs.append(Conversation(f"c{i}", (Turn("human", prompt), Turn("gpt", "w " * reply_words),
                                             Turn("human", "again " + kind), Turn("gpt", "w " * reply_words))))
    return convs


def _word_count(texts):
    return [len(t.split()) for t in texts]


@pytest.fixture(scope="module")
def trained():
    examples = build_examples(_synthetic_conversations(), _word_count)
    split = split_by_conversation(examples, seed=3)
    artifact = fit_artifact(LabelledRows.of(examples, SPEC), split, SPEC, "test", threads=1, rounds=200)
    return artifact, examples, split


def test_model_learns_the_signal_and_beats_the_bucket_baseline(trained) -> None:
    artifact, examples, split = trained
    predictor = GbmPredictor.from_artifact(artifact)
    test = [examples[i] for i in split.test]
    y = np.array([e.reply_tokens for e in test])
    point = np.array([predictor.predict_input(e.request).mean for e in test])
    table = artifact.bucket_means_all_turns
    base = np.array([table.lookup(e.request.input_tokens).mean for e in test])
    assert np.abs(point - y).mean() < 0.5 * np.abs(base - y).mean()


def test_single_row_path_matches_batch_path(trained) -> None:
    artifact, examples, split = trained
    predictor = GbmPredictor.from_artifact(artifact)
    test = [examples[i] for i in split.test]
    rows = LabelledRows.of(test, predictor.spec)
    point, p90 = predictor.predict_rows(rows.x.astype(np.float64), rows.first_turn)
    single = [predictor.predict_input(e.request) for e in test]
    np.testing.assert_allclose([s.mean for s in single], point, rtol=1e-9)
    np.testing.assert_allclose([s.upper for s in single], p90, rtol=1e-9)


def test_artifact_json_round_trip(trained, tmp_path) -> None:
    artifact, examples, _ = trained
    path = save_artifact(artifact, tmp_path / "a.json")
    loaded = load_artifact(path)
    assert loaded == artifact
    request = examples[0].request
    assert GbmPredictor.from_artifact(loaded).predict_input(request) == GbmPredictor.from_artifact(artifact).predict_input(request)
    json.loads(path.read_text())  # plain JSON, no pickle


@settings(max_examples=60, deadline=None)
@given(prompt=st.text(max_size=300), tokens=st.integers(0, 5000),
       history=st.lists(st.builds(PastTurn, st.sampled_from(["human", "gpt"]), st.integers(0, 3000)), max_size=4))
def test_predictions_are_non_negative_and_p90_not_below_mean(trained, prompt, tokens, history) -> None:
    predictor = GbmPredictor.from_artifact(trained[0])
    prediction = predictor.predict(prompt, tokens, history)
    assert 0 <= prediction.mean <= prediction.upper
    assert np.isfinite(prediction.upper)


def test_missing_artifact_warns_and_falls_back(tmp_path) -> None:
    with pytest.warns(UserWarning, match="missing"):
        predictor = load_predictor(tmp_path / "none.json")
    assert isinstance(predictor, BucketMeanPredictor)
    assert predictor.predict("hello", [1, 2, 3]).mean > 0


@pytest.mark.parametrize("content", ["", "{not json", '{"format": "aladdin-output-length"}', "[1, 2]"])
def test_corrupt_artifact_warns_and_falls_back(tmp_path, content) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.warns(UserWarning, match="unusable"):
        predictor = load_predictor(path)
    assert isinstance(predictor, BucketMeanPredictor)


def test_corrupt_model_string_keeps_the_artifacts_tables(trained, tmp_path) -> None:
    artifact = trained[0].model_copy(update={"mean_model": "garbage"})
    path = save_artifact(artifact, tmp_path / "half.json")
    with pytest.warns(UserWarning, match="bucket-mean tables"):
        predictor = load_predictor(path)
    assert isinstance(predictor, BucketMeanPredictor)
    assert predictor.all_turns == artifact.bucket_means_all_turns


def test_good_artifact_loads_without_warning(trained, tmp_path) -> None:
    path = save_artifact(trained[0], tmp_path / "ok.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(load_predictor(path), GbmPredictor)


@given(st.lists(st.tuples(st.integers(0, 100_000), st.floats(0, 1e4)), min_size=1, max_size=200))
def test_bucket_means_cover_every_bucket_with_bucket_means(pairs) -> None:
    inputs, replies = zip(*pairs)
    table = fit_bucket_means(inputs, replies)
    assert len(table.means) == max(log2_bucket(n) for n in inputs) + 1
    for k, mean in enumerate(table.means):
        in_bucket = [r for n, r in pairs if log2_bucket(n) == k]
        if in_bucket:
            assert mean == pytest.approx(np.mean(in_bucket))


@given(st.lists(st.floats(0, 1e4), min_size=10, max_size=300), st.floats(0.1, 1e3))
def test_coverage_scale_reaches_the_target(actual, predicted) -> None:
    actual = np.array(actual)
    pred = np.full(actual.size, predicted)
    scale = coverage_scale(actual, pred)
    # 1e-9 relative slack: actual / pred * pred can round one ulp below actual.
    assert np.mean(actual <= scale * pred * (1 + 1e-9)) >= 0.9


def test_recalibrate_corrects_a_biased_served_model(trained) -> None:
    artifact, examples, _ = trained
    corrector = OnlineCorrector(GbmPredictor.from_artifact(artifact), capacity=1000)
    served = [e for e in examples][:400]
    for e in served:  # the served model writes three times as much as the training data
        corrector.record(e.request, corrector.predictor.predict_input(e.request), 3 * e.reply_tokens)
    before = corrector.error_summary()
    assert before.n == 400 and before.mean_signed_error < 0
    corrector.recalibrate()
    for e in served:
        corrector.record(e.request, corrector.predictor.predict_input(e.request), 3 * e.reply_tokens)
    after = corrector.error_summary()
    assert after.mae < before.mae
    assert after.p90_coverage >= 0.85


def test_refit_learns_the_served_lengths(trained) -> None:
    artifact, examples, _ = trained
    corrector = OnlineCorrector(GbmPredictor.from_artifact(artifact), capacity=1000)
    served = examples[:400]
    for e in served:
        corrector.record(e.request, corrector.predictor.predict_input(e.request), 3 * e.reply_tokens)
    before = corrector.error_summary()
    refitted = corrector.refit(threads=1, rounds=200)
    assert isinstance(refitted, GbmPredictor)
    y = np.array([3 * e.reply_tokens for e in served])
    point = np.array([refitted.predict_input(e.request).mean for e in served])
    assert np.abs(point - y).mean() < before.mae


def test_capacity_bounds_memory_and_small_windows_keep_the_model(trained) -> None:
    corrector = OnlineCorrector(GbmPredictor.from_artifact(trained[0]), capacity=10)
    request = ChatInput("hi", 1)
    for _ in range(25):
        corrector.record(request, corrector.predictor.predict_input(request), 5)
    assert corrector.error_summary().n == 10
    original = corrector.predictor
    assert corrector.recalibrate(min_records=50) is original
