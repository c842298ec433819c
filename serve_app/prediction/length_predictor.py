"""The default output-length predictor artifact: one per tokenizer under the per-user cache,
trained from the packaged ShareGPT data on first use (never downloaded)."""

from __future__ import annotations

import fcntl
from pathlib import Path

TINY = "tiny"


def resolve_tokenizer_dir(name: str) -> Path:
    """`tiny` (the embedded model's tokenizer) or a local Hugging Face tokenizer directory."""
    if name == TINY:
        from serve_app.tiny_model import ensure_tiny_model

        return ensure_tiny_model()
    path = Path(name)
    if not path.is_dir():
        raise SystemExit(f"--tokenizer: {name!r} is neither 'tiny' nor a tokenizer directory")
    return path


def default_artifact_path(tokenizer_dir: Path) -> Path:
    from predictors.output_length import artifact_file_name
    from predictors.output_length.tokenizer import tokenizer_fingerprint
    from serve_app.tiny_model import aladdin_home

    return aladdin_home() / "predictors" / artifact_file_name(tokenizer_fingerprint(tokenizer_dir))


def train(tokenizer_dir: Path, out: Path, threads: int = 2) -> Path:
    """Train on the packaged ShareGPT data and write the artifact to `out`."""
    from predictors.output_length import save_artifact
    from predictors.output_length.tokenizer import load_tokenizer, token_counter, tokenizer_fingerprint
    from predictors.output_length.training import train_artifact
    from predictors.sharegpt import iter_conversations

    try:
        tokenizer = load_tokenizer(tokenizer_dir)
    except ValueError as exc:
        raise SystemExit(f"--tokenizer: {exc}") from exc
    artifact = train_artifact(
        iter_conversations(), token_counter(tokenizer), tokenizer_fingerprint(tokenizer_dir), threads=threads
    )
    return save_artifact(artifact, out)


def ensure_default_artifact(tokenizer_dir: Path | None = None) -> Path:
    """Return the default artifact for a tokenizer (default: tiny), training it once, under a
    file lock, if it is missing."""
    tokenizer_dir = resolve_tokenizer_dir(TINY) if tokenizer_dir is None else tokenizer_dir
    path = default_artifact_path(tokenizer_dir)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            train(tokenizer_dir, path)
    return path
