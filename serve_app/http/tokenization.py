"""`/tokenize` and `/detokenize` as vLLM's server has them (its request and response models), and
the chat rendering they share with chat completions.

The ingress holds the served model's tokenizer and chat template already (it counts every
prompt's tokens before routing), so these are answered here without asking a worker, with the
same token ids the engine is given.

vLLM's protocol modules import vLLM and torch (~10 s and ~460 MB in the ingress, measured), so
they are imported on the first use only (`load_protocol`, which the ingress runs off its event
loop); the ingress's other routes never pay for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jinja2 import TemplateError
from pydantic import TypeAdapter, ValidationError

from serve_app.http.errors import OpenAIError, check_model, from_validation_errors
from serve_app.http.openai_protocol import ChatMessage, valid_unicode

if TYPE_CHECKING:
    from vllm.entrypoints.serve.tokenize.protocol import DetokenizeResponse, TokenizeResponse

_MESSAGES = TypeAdapter(list[ChatMessage])
# TokenizeChatRequest fields that change the rendering and that this server does not apply
_CHAT_FIELDS_REFUSED = ("chat_template", "chat_template_kwargs", "tools", "media_io_kwargs", "mm_processor_kwargs")


def load_protocol() -> None:
    """Import vLLM's tokenize protocol (slow the first time; see the module docstring)."""
    import vllm.entrypoints.serve.tokenize.protocol  # noqa: F401


def render_chat(tokenizer: Any, messages: list[ChatMessage], add_generation_prompt: bool = True,
                continue_final_message: bool = False) -> str:
    """The prompt text the model's chat template makes of `messages`; 400 if it rejects them."""
    try:
        return tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.text} for m in messages], tokenize=False,
            add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message)
    except (TemplateError, ValueError) as exc:  # the template rejecting the conversation (e.g. role
        # order), or transformers the options (continue_final_message with a generation prompt)
        raise OpenAIError(400, f"messages: {exc}", param="messages") from None


def _validated(model: type, body: Any, served_model: str) -> Any:
    from vllm.exceptions import VLLMClientError

    try:
        request = model.model_validate(body)
    except ValidationError as exc:
        raise from_validation_errors(list(exc.errors())) from None
    except VLLMClientError as exc:  # vLLM's own checks across fields
        raise OpenAIError(400, str(exc)) from None
    for name in ("model", "prompt"):  # text the tokenizer or an error message would fail to encode
        try:
            valid_unicode(getattr(request, name, None))
        except ValueError as exc:
            raise OpenAIError(400, f"{name}: {exc}", param=name) from None
    check_model(request.model, served_model)
    return request


def tokenize(tokenizer: Any, body: Any, served_model: str, max_model_len: int) -> TokenizeResponse:
    """vLLM's /tokenize: a prompt (`prompt`) or a conversation (`messages`) to its token ids."""
    from vllm.entrypoints.serve.tokenize.protocol import (
        TokenizeChatRequest,
        TokenizeCompletionRequest,
        TokenizeResponse,
    )

    if isinstance(body, dict) and "messages" in body:
        request = _validated(TokenizeChatRequest, body, served_model)
        for name in _CHAT_FIELDS_REFUSED:
            if getattr(request, name):
                raise OpenAIError(400, f"{name}: not supported by this server", param=name)
        if not request.messages:
            raise OpenAIError(400, "messages: at least one message is required", param="messages")
        try:
            messages = _MESSAGES.validate_python(request.messages)
        except ValidationError as exc:
            raise from_validation_errors([{**e, "loc": ("messages", *e["loc"])} for e in exc.errors()]) from None
        text = render_chat(tokenizer, messages, request.add_generation_prompt, request.continue_final_message)
    else:
        request = _validated(TokenizeCompletionRequest, body, served_model)
        text = request.prompt
    ids = tokenizer(text, add_special_tokens=request.add_special_tokens).input_ids
    token_strs = tokenizer.convert_ids_to_tokens(ids) if request.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=max_model_len, tokens=ids, token_strs=token_strs)


def detokenize(tokenizer: Any, body: Any, served_model: str) -> DetokenizeResponse:
    """vLLM's /detokenize: token ids to their text."""
    from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, DetokenizeResponse

    request = _validated(DetokenizeRequest, body, served_model)
    vocab_size = len(tokenizer)
    if any(t >= vocab_size for t in request.tokens):
        raise OpenAIError(400, f"tokens: ids must be in [0, {vocab_size})", param="tokens")
    return DetokenizeResponse(prompt=tokenizer.decode(request.tokens))

