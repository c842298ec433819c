"""The embedded default model: a tiny Llama checkpoint with random weights and a byte-level
BPE tokenizer trained on ShareGPT text, built deterministically from a seed.

Output text is gibberish, but token counts behave like a real vocabulary's, which is what
length prediction, placement and benchmarking need. Request lengths are forced with
`max_tokens` + `ignore_eos`, as vLLM's own benchmarks do.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from predictors.sharegpt import iter_conversations

# A simple ChatML-style template: the tiny tokenizer has no template of its own.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the tiny model. head_dim = hidden / heads must be 64 for vLLM's CPU kernels."""

    vocab_size: int = 16384
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 2
    # rotary positions take no weights: a long limit lets a bench keep long prompts' prefixes
    max_position_embeddings: int = 16384
    tokenizer_conversations: int = 3000
    seed: int = 0

    def fingerprint(self) -> str:
        """Short hash naming this spec, so a cached build is never mistaken for another."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


DEFAULT_SPEC = TinyModelSpec()
MARKER = "aladdin_tiny_model.json"


def _training_text(spec: TinyModelSpec) -> list[str]:
    texts: list[str] = []
    for conv in iter_conversations(limit=spec.tokenizer_conversations):
        texts.extend(t.text for t in conv.turns if t.text)
    return texts


def _build_tokenizer(spec: TinyModelSpec, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(spec), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        model_max_length=spec.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))


def _build_weights(spec: TinyModelSpec, out: Path, vocab_size: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(spec.seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        head_dim=spec.hidden_size // spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out), safe_serialization=True)


def build_tiny_model(out: Path, spec: TinyModelSpec = DEFAULT_SPEC) -> Path:
    """Write the tiny checkpoint and tokenizer to `out` (replaced if present); return `out`."""
    if spec.hidden_size // spec.num_heads != 64:
        raise ValueError("head_dim must be 64: vLLM's CPU attention kernels reject others")
    from transformers import AutoTokenizer

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent))
    try:
        _build_tokenizer(spec, staging)
        vocab = len(AutoTokenizer.from_pretrained(str(staging)))
        _build_weights(spec, staging, vocab)
        (staging / MARKER).write_text(json.dumps({"spec": asdict(spec)}, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def aladdin_home() -> Path:
    """Root of the per-user cache (models, predictor artifacts); `ALADDIN_HOME` overrides."""
    return Path(os.environ.get("ALADDIN_HOME", Path.home() / ".cache" / "aladdin"))


def default_tiny_model_dir(spec: TinyModelSpec = DEFAULT_SPEC) -> Path:
    return aladdin_home() / "models" / f"tiny-{spec.fingerprint()}"


def ensure_tiny_model(spec: TinyModelSpec = DEFAULT_SPEC) -> Path:
    """Return the cached tiny model, building it once (under a file lock) if it is missing.

    Every node of a cluster can call this: the build is deterministic, so all get equal files.
    """
    out = default_tiny_model_dir(spec)
    if (out / MARKER).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / MARKER).exists():
            build_tiny_model(out, spec)
    return out
