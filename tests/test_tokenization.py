"""/tokenize and /detokenize in vLLM's request and response models (serve_app.http.tokenization),
on the tiny model's tokenizer with the ingress's default chat template."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from serve_app.http.errors import OpenAIError
from serve_app.http.tokenization import detokenize, render_chat, tokenize
from serve_app.http.openai_protocol import ChatMessage
from serve_app.tiny_model import CHAT_TEMPLATE, ensure_tiny_model


@pytest.fixture(scope="module")
def tokenizer():
    tok = AutoTokenizer.from_pretrained(str(ensure_tiny_model()))
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_a_prompt_round_trips(tokenizer):
    out = tokenize(tokenizer, {"model": "tiny", "prompt": "hello there", "return_token_strs": True}, "tiny", 2048)
    assert out.tokens == tokenizer("hello there").input_ids and out.count == len(out.tokens)
    assert out.max_model_len == 2048 and out.token_strs == tokenizer.convert_ids_to_tokens(out.tokens)
    assert tokenize(tokenizer, {"prompt": "hello there", "add_special_tokens": False}, "tiny", 2048).tokens == \
        tokenizer("hello there", add_special_tokens=False).input_ids
    back = detokenize(tokenizer, {"tokens": tokenizer("hello there", add_special_tokens=False).input_ids}, "tiny")
    assert back.prompt == "hello there"


def test_a_conversation_gets_the_ids_chat_completions_send(tokenizer):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                {"role": "user", "content": [{"type": "text", "text": "more"}]}]
    text = render_chat(tokenizer, [ChatMessage.model_validate(m) for m in messages])
    out = tokenize(tokenizer, {"messages": messages}, "tiny", 2048)
    assert out.tokens == tokenizer(text, add_special_tokens=False).input_ids
    bare = tokenize(tokenizer, {"messages": messages, "add_generation_prompt": False}, "tiny", 2048)
    assert bare.count < out.count  # without the assistant header the template adds


@pytest.mark.parametrize(("call", "body", "status", "param"), [
    ("tokenize", {"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ("tokenize", {"prompt": 3}, 400, "prompt"),
    ("tokenize", {"messages": []}, 400, "messages"),
    ("tokenize", {"messages": [{"role": "user", "content": "x"}], "chat_template": "{{ 1 }}"}, 400, "chat_template"),
    ("tokenize", {"messages": [{"role": "user", "content": "x"}],
                  "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ("tokenize", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, None),
    ("tokenize", {"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": True,
                  "continue_final_message": True}, 400, None),
    ("tokenize", {"messages": [{"role": "user", "content": "x"}], "continue_final_message": True}, 400, "messages"),
    ("detokenize", {"tokens": [10 ** 9]}, 400, "tokens"),
    ("detokenize", {"tokens": [-1]}, 400, "tokens.0"),
    ("detokenize", {"tokens": [1], "model": "other"}, 404, "model"),
])
def test_bad_input_is_a_4xx_naming_the_field(tokenizer, call, body, status, param):
    with pytest.raises(OpenAIError) as err:
        if call == "tokenize":
            tokenize(tokenizer, body, "tiny", 2048)
        else:
            detokenize(tokenizer, body, "tiny")
    assert err.value.status == status
    if param is not None:
        assert err.value.param == param


def test_a_lone_surrogate_is_a_400_not_a_tokenizer_crash(tokenizer):
    for field in ("prompt", "model"):
        with pytest.raises(OpenAIError) as err:
            tokenize(tokenizer, {"prompt": "ab", field: "a\ud800b"}, "tiny", 2048)
        assert err.value.status == 400 and err.value.param == field
