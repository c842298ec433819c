"""Output-length predictor: LightGBM point and p90 models on cheap request features, trained
on ShareGPT, with a bucket-mean fallback and online correction. No Ray imports."""

from predictors.output_length.artifact import Artifact, load_artifact, save_artifact
from predictors.output_length.features import ChatInput, FeatureSpec, PastTurn
from predictors.output_length.online import ErrorSummary, OnlineCorrector
from predictors.output_length.prediction import Prediction
from predictors.output_length.training import TRAINING_RECIPE
from predictors.output_length.predictor import (
    BucketMeanPredictor,
    GbmPredictor,
    LengthPredictor,
    chat_input,
    fallback_predictor,
    load_predictor,
)


def artifact_file_name(tokenizer_fingerprint: str) -> str:
    """File name of the default artifact trained for a tokenizer by the current recipe (a new
    recipe gets a new name, so a cached artifact from an older one is not reused)."""
    return f"output-length-r{TRAINING_RECIPE}-{tokenizer_fingerprint}.json"


__all__ = [
    "Artifact",
    "BucketMeanPredictor",
    "ChatInput",
    "ErrorSummary",
    "FeatureSpec",
    "GbmPredictor",
    "LengthPredictor",
    "OnlineCorrector",
    "PastTurn",
    "Prediction",
    "artifact_file_name",
    "chat_input",
    "fallback_predictor",
    "load_artifact",
    "load_predictor",
    "save_artifact",
]
