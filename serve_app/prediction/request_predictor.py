"""The ingress's output-length predictor: one prediction per request, online correction from
the requests it serves."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from predictors.output_length import ChatInput, OnlineCorrector, Prediction, load_predictor
from serve_app.config import PredictorConfig
from serve_app.prediction.length_predictor import default_artifact_path, ensure_default_artifact

logger = logging.getLogger("ray.serve")


def _artifact_path(config: PredictorConfig, tokenizer_dir: Path) -> Path | None:
    if config.artifact:
        return Path(config.artifact).expanduser()
    if not config.train_if_missing:
        return default_artifact_path(tokenizer_dir)
    try:
        return ensure_default_artifact(tokenizer_dir)
    except Exception as exc:  # a failed training must not stop the server: fall back
        logger.warning("could not train the default output-length predictor: %r", exc)
        return None


class RequestPredictor:
    """Predicts output lengths and learns from served requests.

    Only requests that ended by themselves (finish reason `stop`, no `ignore_eos`) are recorded:
    a reply cut at max_tokens says only that the true length is at least that long, and
    recording it would teach the predictor the caller's limit instead of the model's length.
    """

    def __init__(self, config: PredictorConfig, tokenizer_dir: Path) -> None:
        self._corrector = OnlineCorrector(load_predictor(_artifact_path(config, tokenizer_dir)))
        self._recalibrate_every = config.recalibrate_every
        self._recorded_since_calibration = 0
        self.recorded = 0

    def predict(self, chat: ChatInput, max_tokens: int, *, cap: bool = True) -> Prediction:
        """Predicted output length, capped by the request's max_tokens unless `cap` is False
        (benchmark requests, whose max_tokens is the true length)."""
        raw = self._corrector.predictor.predict_input(chat)
        if not cap:
            return raw
        return Prediction(mean=min(raw.mean, max_tokens), upper=min(raw.upper, max_tokens))

    def record(self, chat: ChatInput, prediction: Prediction, actual_tokens: int, finish_reason: str | None,
               ignore_eos: bool) -> bool:
        """Record a finished request if its length is the model's own; True if recorded."""
        if finish_reason != "stop" or ignore_eos:
            return False
        self._corrector.record(chat, prediction, actual_tokens)
        self.recorded += 1
        self._recorded_since_calibration += 1
        if self._recorded_since_calibration >= self._recalibrate_every:
            self._corrector.recalibrate(min_records=self._recalibrate_every)
            self._recorded_since_calibration = 0
        return True

    def stats(self) -> dict[str, Any]:
        """Predicted-vs-actual error over the current window, and how many were recorded."""
        return {"recorded": self.recorded, "kind": type(self._corrector.predictor).__name__,
                **asdict(self._corrector.error_summary())}
