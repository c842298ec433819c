"""Where a worker or the ingress finds the model files."""

from __future__ import annotations

from pathlib import Path

from serve_app.config import ModelConfig
from serve_app.tiny_model import ensure_tiny_model


def resolve_model_dir(model: ModelConfig) -> Path:
    """The configured local model directory, or the embedded tiny model (built on first use)."""
    if model.path is None:
        return ensure_tiny_model()
    path = Path(model.path).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"model.path {str(path)!r} is not a Hugging Face model directory (no config.json); "
            "models are never downloaded, point model.path at a local checkpoint"
        )
    return path.resolve()


def resolve_tokenizer_dir(model: ModelConfig) -> Path:
    """The tokenizer directory: `model.tokenizer` if set, else the model directory."""
    if model.tokenizer:
        return Path(model.tokenizer).expanduser().resolve()
    return resolve_model_dir(model)
