"""The predictor artifact: one JSON file with both LightGBM models, the feature settings,
the calibration and the bucket-mean fallback tables. No pickle."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel

from predictors.output_length.baseline import BucketMeans
from predictors.output_length.calibration import Calibration
from predictors.output_length.features import FeatureSpec

ARTIFACT_FORMAT = "aladdin-output-length"
ARTIFACT_VERSION = 1


class FeatureSettings(BaseModel):
    """JSON form of FeatureSpec."""

    hash_buckets: int
    head_words: int
    tail_words: int
    scan_chars: int

    @classmethod
    def of(cls, spec: FeatureSpec) -> FeatureSettings:
        return cls(**spec.__dict__)

    def spec(self) -> FeatureSpec:
        return FeatureSpec(**self.model_dump())


class SplitSettings(BaseModel):
    seed: int
    calibration_fraction: float
    test_fraction: float


class Artifact(BaseModel):
    """Everything needed to serve and to evaluate the output-length predictor."""

    format: str = ARTIFACT_FORMAT
    version: int = ARTIFACT_VERSION
    tokenizer_fingerprint: str
    features: FeatureSettings
    mean_model: str  # LightGBM model_to_string(); target is log1p(reply tokens)
    p90_model: str
    calibration: Calibration
    bucket_means_first_turn: BucketMeans
    bucket_means_all_turns: BucketMeans
    split: SplitSettings
    train_rows: int
    train_seconds: float


def save_artifact(artifact: Artifact, path: Path) -> Path:
    """Write atomically (temp file + rename) so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(artifact.model_dump_json())
    os.replace(tmp, path)
    return path


def load_artifact(path: Path) -> Artifact:
    """Read and validate; raises ValueError (or OSError) on anything unusable."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    artifact = Artifact.model_validate(data)
    if artifact.format != ARTIFACT_FORMAT or artifact.version != ARTIFACT_VERSION:
        raise ValueError(f"unsupported artifact {artifact.format} v{artifact.version}")
    return artifact
