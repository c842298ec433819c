import hashlib
import json
from pathlib import Path

from serve_app.tools.cli import main
from serve_app.tiny_model import MARKER, ensure_tiny_model


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_cli_build_is_deterministic_and_matches_the_cached_default(tmp_path):
    out = tmp_path / "tiny"
    assert main(["model", "tiny", "--out", str(out)]) == 0
    assert _digest(out) == _digest(ensure_tiny_model())


def test_tiny_model_shape_and_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    model_dir = ensure_tiny_model()
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    assert (model_dir / MARKER).exists()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    text = "The quick brown fox jumps over the lazy dog, and then explains Python decorators."
    n = len(tok(text).input_ids)
    # A real BPE vocabulary: whole common words are single tokens (not bytes, not characters).
    assert len(text.split()) <= n <= len(text) // 2
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat.endswith("<|im_start|>assistant\n")


def test_other_seed_gives_other_weights(tmp_path):
    a = tmp_path / "a"
    main(["model", "tiny", "--out", str(a), "--seed", "1"])
    digest_a = _digest(a)
    assert digest_a["model.safetensors"] != _digest(ensure_tiny_model())["model.safetensors"]
    assert digest_a["tokenizer.json"] == _digest(ensure_tiny_model())["tokenizer.json"]
