"""OpenAI-compatible request and response models (the subset this server implements).

Unknown request fields are ignored, as vLLM's server does, so clients that send extra
options keep working. vLLM's extensions `ignore_eos`, `min_tokens` and `top_k` are accepted.
Fields of OpenAI's or vLLM's API that change the output and that this server does not
implement (tools, structured outputs, logit bias, logprobs, ...) are refused with a 400 naming
the field, unless their value asks for nothing (`tools: []`, `response_format: {"type":
"text"}`, ...): a client asking for JSON must not get free text with a 200.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator


def valid_unicode(value: Any) -> Any:
    """`value` (a string, a list of them, or anything else) unchanged if its strings have a UTF-8
    form. JSON may carry lone surrogates ("\\ud800") that decode to strings without one; the
    tokenizer, the engine and an error message echoing them would all fail on them."""
    try:
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("string is not valid Unicode (lone surrogate)") from None
    return value


def _noop_only(*noops: Any) -> Any:
    """The type of a field this server cannot honour: accepted only at a value that asks for
    nothing (one of `noops`, or absent), else a 400 naming it."""
    def same(value: Any, noop: Any) -> bool:  # 1 and 1.0 alike, True and 1 not
        numbers = (int, float)
        if isinstance(noop, numbers) and not isinstance(noop, bool):
            return isinstance(value, numbers) and not isinstance(value, bool) and value == noop
        return type(value) is type(noop) and value == noop

    def check(value: Any) -> Any:
        if value is None or any(same(value, noop) for noop in noops):
            return value
        shown = "".join(f"{n!r} or " for n in noops)
        raise ValueError(f"not supported by this server (accepted only as {shown}absent)")

    return Annotated[Any, AfterValidator(check)]


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by completion and chat requests."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(-1, ge=-1)
    n: int = Field(1, ge=1, le=1, description="Only n=1 is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    user: str | None = None
    # not implemented here (see the module docstring): refused unless they ask for nothing
    logit_bias: _noop_only({}) = None
    response_format: _noop_only({"type": "text"}) = None
    tools: _noop_only([]) = None
    tool_choice: _noop_only("none", "auto") = None
    functions: _noop_only([]) = None
    function_call: _noop_only("none", "auto") = None
    repetition_penalty: _noop_only(1.0) = None
    min_p: _noop_only(0.0) = None
    stop_token_ids: _noop_only([]) = None
    bad_words: _noop_only([]) = None
    allowed_token_ids: _noop_only([]) = None
    prompt_logprobs: _noop_only() = None  # even 0 asks vLLM for each prompt token's own
    use_beam_search: _noop_only(False) = None
    include_stop_str_in_output: _noop_only(False) = None
    skip_special_tokens: _noop_only(True) = None
    guided_json: _noop_only() = None
    guided_regex: _noop_only() = None
    guided_choice: _noop_only() = None
    guided_grammar: _noop_only() = None
    structured_outputs: _noop_only() = None
    truncate_prompt_tokens: _noop_only() = None
    logits_processors: _noop_only([]) = None
    prompt_embeds: _noop_only() = None
    # Aladdin extensions: per-request SLOs (headers x-slo-ttft-ms / x-slo-atgt-ms also work).
    slo_ttft_ms: float | None = Field(None, gt=0, le=3_600_000)
    slo_atgt_ms: float | None = Field(None, gt=0, le=3_600_000)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str]:
        if value is None:
            return []
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return valid_unicode(stops)

    @field_validator("model", "user")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return valid_unicode(value)

    def sampling(self, max_tokens: int) -> dict[str, Any]:
        """Keyword arguments for vLLM's SamplingParams."""
        return {
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "stop": list(self.stop or []),
            "seed": self.seed,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "ignore_eos": self.ignore_eos,
            "min_tokens": min(self.min_tokens, max_tokens),
        }

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    echo: Literal[False] = False
    logprobs: None = None
    suffix: None = None
    best_of: _noop_only(1) = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: Any) -> str | list[int]:
        # A list of strings or of token lists is a batch; only a batch of one is supported.
        if isinstance(value, list) and value and isinstance(value[0], (str, list)):
            if len(value) != 1:
                raise ValueError("only one prompt per request is supported")
            value = value[0]
        if isinstance(value, str) and not value:
            raise ValueError("prompt must not be empty")
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be empty")
        return valid_unicode(value)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart]

    @field_validator("content")
    @classmethod
    def _text(cls, value: str | list[ContentPart]) -> str | list[ContentPart]:
        valid_unicode(value if isinstance(value, str) else [part.text for part in value])
        return value

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: Literal[False] | None = None
    top_logprobs: _noop_only(0) = None
    # the ingress renders the model's own template with a generation prompt, nothing else
    chat_template: _noop_only() = None
    chat_template_kwargs: _noop_only({}) = None
    add_generation_prompt: _noop_only(True) = None
    continue_final_message: _noop_only(False) = None
    echo: _noop_only(False) = None

    @model_validator(mode="after")
    def _one_limit(self) -> "ChatCompletionRequest":
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "Usage":
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())
