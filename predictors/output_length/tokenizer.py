"""Token counting with a Hugging Face tokenizer directory (no network)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

TokenCounter = Callable[[Sequence[str]], list[int]]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json")


def load_tokenizer(directory: str | Path):
    """Load a Hugging Face tokenizer from a local directory; a clear ValueError otherwise."""
    path = Path(directory)
    if not path.is_dir() or not any((path / name).exists() for name in _TOKENIZER_FILES):
        raise ValueError(f"{directory!s} is not a Hugging Face tokenizer directory")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


_BATCH = 1024  # texts per encode call: bounds the memory of the encodings held at once


def token_counter(tokenizer) -> TokenCounter:
    """Batch token counter (no special tokens), using the Rust backend's batch encoder if any."""
    backend = getattr(tokenizer, "backend_tokenizer", None)

    def count(texts: Sequence[str]) -> list[int]:
        counts: list[int] = []
        for start in range(0, len(texts), _BATCH):
            batch = list(texts[start : start + _BATCH])
            if backend is not None:
                counts.extend(len(e.ids) for e in backend.encode_batch(batch, add_special_tokens=False))
            else:
                counts.extend(len(ids) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"])
        return counts

    return count


def tokenizer_fingerprint(directory: str | Path) -> str:
    """Short hash of the tokenizer's files: names the default artifact built for it."""
    digest = hashlib.sha256()
    for name in _TOKENIZER_FILES:
        file = Path(directory) / name
        if file.exists():
            digest.update(name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]
