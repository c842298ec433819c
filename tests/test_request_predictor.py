import warnings

import pytest

from predictors.output_length import BucketMeanPredictor, ChatInput
from serve_app.config import PredictorConfig
from serve_app.http.request_options import request_options
from serve_app.http.errors import OpenAIError
from serve_app.prediction.request_predictor import RequestPredictor


@pytest.fixture()
def fallback(tmp_path) -> RequestPredictor:
    config = PredictorConfig(artifact=str(tmp_path / "missing.json"), recalibrate_every=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = RequestPredictor(config, tmp_path)
    assert caught, "a missing artifact must warn"
    return predictor


def test_missing_artifact_falls_back_and_predictions_respect_max_tokens(fallback):
    assert fallback.stats()["kind"] == BucketMeanPredictor.__name__
    chat = ChatInput(prompt="Write a long essay about rivers.", prompt_tokens=8)
    free = fallback.predict(chat, max_tokens=4000)
    capped = fallback.predict(chat, max_tokens=5)
    assert 0 < free.mean <= free.upper
    assert capped.mean <= 5 and capped.upper <= 5
    # a benchmark's max_tokens is the forced true length: the prediction must not see it
    assert fallback.predict(chat, max_tokens=5, cap=False) == free


def test_only_natural_endings_are_recorded_and_recalibration_runs(fallback):
    chat = ChatInput(prompt="hi", prompt_tokens=1)
    pred = fallback.predict(chat, 1000)
    assert not fallback.record(chat, pred, 1000, "length", ignore_eos=False)  # cut by max_tokens
    assert not fallback.record(chat, pred, 50, "stop", ignore_eos=True)  # forced length
    for _ in range(10):
        assert fallback.record(chat, pred, 3 * round(pred.mean) + 7, "stop", ignore_eos=False)
    stats = fallback.stats()
    assert stats["recorded"] == 10
    # the 10th record triggered recalibration, which rescales toward the served lengths
    after = fallback.predict(chat, 1000)
    assert after.mean > pred.mean


@pytest.mark.parametrize("headers, expected", [
    ({}, {}),
    ({"x-slo-ttft-ms": "250"}, {"ttft": 250.0}),
    ({"x-slo-ttft-ms": "250", "x-slo-atgt-ms": "20.5"}, {"ttft": 250.0, "atgt": 20.5}),
])
def test_slo_headers(headers, expected):
    assert request_options(headers).slo_ms == expected


@pytest.mark.parametrize("value", ["0", "-3", "fast", "nan", "1e12"])
def test_bad_slo_headers_are_400(value):
    with pytest.raises(OpenAIError) as err:
        request_options({"x-slo-atgt-ms": value})
    assert err.value.status == 400 and err.value.param == "x-slo-atgt-ms"


@pytest.mark.parametrize("value, marked", [(None, False), ("1", True), ("true", True), ("0", False), ("False", False)])
def test_benchmark_header(value, marked):
    headers = {} if value is None else {"x-aladdin-benchmark": value}
    assert request_options(headers).benchmark is marked


def test_bad_benchmark_header_is_400():
    with pytest.raises(OpenAIError) as err:
        request_options({"x-aladdin-benchmark": "maybe"})
    assert err.value.status == 400 and err.value.param == "x-aladdin-benchmark"


NOW_S = 1_765_000_000.0  # a wall-clock time in 2025


@pytest.mark.parametrize("value", [f"t={NOW_S - 2:.3f}", f"{NOW_S - 2}", f"t={int((NOW_S - 2) * 1e3)}",
                                   f"t={int((NOW_S - 2) * 1e6)}", f"t={int((NOW_S - 2) * 1e9)}"])
def test_a_front_proxys_request_start_moves_the_arrival_earlier(value):
    """X-Request-Start in s (nginx's t=${msec}), ms or us: the TTFT counts from the proxy."""
    options = request_options({"x-request-start": value}, received_s=NOW_S)
    assert options.received_s == pytest.approx(NOW_S - 2, abs=1e-3)


def test_a_request_start_after_the_receipt_is_clock_skew_and_changes_nothing():
    assert request_options({"x-request-start": f"t={NOW_S + 3}"}, received_s=NOW_S).received_s == NOW_S
    assert request_options({"x-request-start": f"t={NOW_S - 2}"}).received_s is None  # handle calls: now


@pytest.mark.parametrize("value", ["soon", "t=", "t=-5", "t=nan", "t=inf", f"t={NOW_S - 7200}"])
def test_a_bad_or_ancient_request_start_is_400(value):
    with pytest.raises(OpenAIError) as err:
        request_options({"x-request-start": value}, received_s=NOW_S)
    assert err.value.status == 400 and err.value.param == "x-request-start"
