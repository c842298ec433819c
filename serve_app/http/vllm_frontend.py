"""vLLM's OpenAI serving layer, hosted in the ingress over an engine client that places requests.

vLLM's own server is split the same way: its API process renders prompts (chat templates,
tokenization), validates requests, builds `SamplingParams` and turns `RequestOutput`s into
OpenAI responses (logprobs, n, echo, tool calls, usage), while an engine client carries each
request to the engine. Here that client is `PlacedEngineClient`: its `generate` runs this
project's path (predict, admit, place, stream from the chosen worker's engine) and yields
vLLM's `RequestOutput`s. So every request is tokenized once, before routing, and the OpenAI
work is vLLM's (`vllm.entrypoints.openai.*`), not a copy of it. The workers' engines (vLLM's
`AsyncLLM`) apply the sampling parameters, structured outputs and logprobs.

Imports vLLM (seconds, ~0.5 GB): import this module only where it is served.
"""

from __future__ import annotations

import logging
from argparse import Namespace
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Executor, Future
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any

from pydantic import BaseModel, Field, model_validator
from starlette.datastructures import State
from vllm.config import VllmConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.engine.protocol import EngineClient
from vllm.entrypoints.launchers.api_server.app_state import init_app_state
from vllm.entrypoints.launchers.cli_args import FrontendArgs
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest, ChatCompletionStreamResponse
from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
from vllm.entrypoints.openai.completion.protocol import CompletionRequest, CompletionStreamResponse
from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
from vllm.entrypoints.openai.models.serving import OpenAIServingModels
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
from vllm.entrypoints.openai.responses.serving import OpenAIServingResponses
from vllm.entrypoints.serve.engine import protocol as engine_protocol
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeChatRequest, TokenizeCompletionRequest
from vllm.entrypoints.serve.tokenize.serving import ServingTokenization
from vllm.exceptions import RetryableRequestError, VLLMValidationError
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.renderers import renderer_from_config
from vllm.sampling_params import RequestOutputKind, SamplingParams

from serve_app.config import AppConfig
from serve_app.http.request_options import MAX_SLO_MS
from serve_app.tiny_model import CHAT_TEMPLATE
from serve_app.worker.vllm_engine import engine_kwargs
from serve_app.worker.worker_protocol import GenerateChunk

logger = logging.getLogger("ray.serve")

# used by the ingress through this module
__all__ = ["ChatCompletionStreamResponse", "CompletionStreamResponse", "DetokenizeRequest", "ErrorResponse",
           "RetryableRequestError", "TokenizeChatRequest", "TokenizeCompletionRequest"]


# Fields vLLM removed (guided decoding) and now ignores with a log line: a client setting one
# would get unconstrained output with a 200, so they are refused instead.
REMOVED_FIELDS: frozenset[str] = getattr(engine_protocol, "_REMOVED_GUIDED_FIELDS", frozenset())


class SloFields(BaseModel):
    """This project's request fields: per-request SLOs (headers x-slo-ttft-ms / x-slo-atgt-ms
    also set them). Also refuses the fields vLLM removed (`REMOVED_FIELDS`)."""

    slo_ttft_ms: float | None = Field(None, gt=0, le=MAX_SLO_MS)
    slo_atgt_ms: float | None = Field(None, gt=0, le=MAX_SLO_MS)

    @model_validator(mode="before")
    @classmethod
    def _refuse_removed_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            removed = sorted(k for k in REMOVED_FIELDS if data.get(k) is not None)
            if removed:
                raise ValueError(f"{', '.join(removed)}: removed from vLLM's API and not applied; use "
                                 "`structured_outputs` or `response_format`")
        return data


class PlacedCompletionRequest(CompletionRequest, SloFields):
    """vLLM's completion request with the SLO fields."""


class PlacedChatCompletionRequest(ChatCompletionRequest, SloFields):
    """vLLM's chat completion request with the SLO fields."""


class PlacedResponsesRequest(ResponsesRequest, SloFields):
    """vLLM's Responses API request with the SLO fields."""


# The ingress call being served, for the `generate` vLLM's serving layer calls (it passes no
# context of its own). Here, not in the ingress module: Serve pickles that one's globals.
current_call: ContextVar[Any] = ContextVar("current_call")

# (prompt as vLLM rendered it: its `prompt_token_ids` and, where known, `prompt` text,
#  sampling parameters, request id) -> the request's outputs
PlacedGenerate = Callable[[dict[str, Any], SamplingParams, str], AsyncIterator[RequestOutput]]


class PlacedEngineClient(EngineClient):
    """The engine client vLLM's serving classes call: `generate` is this project's placement
    path. Engine-wide controls (sleep, profiling, LoRA, pooling) are not offered."""

    def __init__(self, vllm_config: VllmConfig, renderer: Any, generate: PlacedGenerate) -> None:
        self.vllm_config = vllm_config
        self.model_config = vllm_config.model_config
        self.renderer = renderer
        self.input_processor = None  # the workers' engines process inputs
        self._generate = generate

    is_running = property(lambda self: True)
    is_stopped = property(lambda self: False)
    errored = property(lambda self: False)  # a failing worker fails its requests, not the server
    dead_error = property(lambda self: RuntimeError("engine client is not dead"))

    def generate(self, prompt: Any, sampling_params: SamplingParams, request_id: str, *,
                 priority: int = 0, **_: Any) -> AsyncIterator[RequestOutput]:
        # what the placement path does not carry is refused, as vLLM's FCFS engine refuses a
        # priority, rather than dropped (tracing headers and LoRA-free defaults are nothing to
        # apply; the prompt's cache_salt travels with it to the worker's engine)
        if priority:
            raise VLLMValidationError("priority: not supported (requests are ordered by their SLOs)",
                                      parameter="priority")
        return self._generate(prompt, sampling_params, request_id)

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("pooling is not served")

    async def abort(self, request_id: str | Iterable[str]) -> None:
        """Nothing to do: a request ends when its stream is closed."""

    async def get_supported_tasks(self) -> tuple[str, ...]:
        return ("generate",)

    async def is_tracing_enabled(self) -> bool:
        return False

    async def do_log_stats(self) -> None:
        """The workers' engines log their own."""

    async def check_health(self) -> None:
        """The ingress's /health asks the workers."""

    async def notify_kv_transfer_request_rejected(self, *args: Any, **kwargs: Any) -> None:
        """No KV transfer."""

    async def start_profile(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    async def stop_profile(self) -> None:
        raise NotImplementedError

    async def reset_mm_cache(self) -> None:
        """No multimodal cache here."""

    async def reset_encoder_cache(self) -> None:
        """No encoder cache here."""

    async def reset_prefix_cache(self, *args: Any, **kwargs: Any) -> bool:
        return False

    async def sleep(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    async def release_kv_cache_memory(self) -> None:
        raise NotImplementedError

    async def wake_up(self, *args: Any, **kwargs: Any) -> bool:
        raise NotImplementedError

    async def is_sleeping(self) -> bool:
        return False

    async def add_lora(self, *args: Any, **kwargs: Any) -> bool:
        raise NotImplementedError("LoRA adapters are not served")

    async def pause_generation(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    async def resume_generation(self) -> None:
        raise NotImplementedError

    async def is_paused(self) -> bool:
        return False

    def shutdown(self, timeout: float | None = None) -> None:
        """Nothing runs here."""


# Renderer jobs (tokenizing, applying a chat template, detokenizing) whose text is at most
# this long run on the event loop's thread: handing one to vLLM's tokenizer thread costs
# ~0.1-0.3 ms of CPU per request (a wake-up each way), about what tokenizing ~1,000 characters
# costs, while longer inputs still go to the thread and leave the loop free.
INLINE_RENDER_MAX_CHARS = 1_000
_CHARS_PER_TOKEN_ID = 4  # a token id to detokenize counts as about this much text


def text_chars(value: Any, limit: int) -> int:
    """About how much text `value` (a renderer job's arguments: strings, token ids, dicts and
    lists of them) holds, counting up to just past `limit`."""
    total = 0
    pending = [value]
    while pending and total <= limit:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, int):
            total += _CHARS_PER_TOKEN_ID
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
        elif isinstance(item, partial):
            pending.extend((item.args, item.keywords))
    return total


class ShortJobsInline(Executor):
    """An executor that runs a job on the caller's thread when its text is short
    (`INLINE_RENDER_MAX_CHARS`) and hands longer ones to `pool`."""

    def __init__(self, pool: Executor, max_chars: int = INLINE_RENDER_MAX_CHARS) -> None:
        self._pool = pool
        self._max_chars = max_chars

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if text_chars((fn, args, kwargs), self._max_chars) > self._max_chars:
            return self._pool.submit(fn, *args, **kwargs)
        done: Future = Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # the awaiting caller gets it, as from the pool
            done.set_exception(exc)
        return done

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def inline_short_renders(renderer: Any) -> bool:
    """Make `renderer` (vLLM's) run short jobs inline (`ShortJobsInline`); False, leaving it as
    it is, where its executor is not the swappable pool this was written against."""
    executor = getattr(renderer, "_executor", None)
    pool = getattr(executor, "_inner", None)
    if not isinstance(pool, Executor) or isinstance(pool, ShortJobsInline):
        return False
    executor._inner = ShortJobsInline(pool)
    return True


@dataclass(frozen=True)
class VllmFrontend:
    """vLLM's serving objects for the routes the ingress serves."""

    completion: OpenAIServingCompletion
    chat: OpenAIServingChat
    responses: OpenAIServingResponses
    models: OpenAIServingModels
    tokenization: ServingTokenization


async def start_frontend(config: AppConfig, generate: PlacedGenerate) -> VllmFrontend:
    """vLLM's serving layer for `config`'s model (its tokenizer and chat template, the model
    config read from its files; nothing is loaded onto a device), over `generate`."""
    engine_args = AsyncEngineArgs(**engine_kwargs(config))
    vllm_config = VllmConfig(model_config=engine_args.create_model_config())
    renderer = renderer_from_config(vllm_config)
    if not inline_short_renders(renderer):
        logger.info("vLLM's renderer executor is not the expected pool: every prompt is tokenized on its thread")
    tokenizer = renderer.get_tokenizer()
    ingress = config.ingress
    frontend_args = FrontendArgs(
        # a model without a template of its own gets a ChatML-style default (the tiny model)
        chat_template=None if getattr(tokenizer, "chat_template", None) else CHAT_TEMPLATE,
        tool_call_parser=ingress.tool_call_parser,
        enable_auto_tool_choice=ingress.enable_auto_tool_choice,
        # usage.prompt_tokens_details.cached_tokens, as OpenAI reports it: the engine's prefix hit
        enable_prompt_tokens_details=True,
    )
    state = State()
    client = PlacedEngineClient(vllm_config, renderer, generate)
    await init_app_state(client, state, Namespace(**(vars(engine_args) | vars(frontend_args))),
                         supported_tasks=("generate",))
    return VllmFrontend(state.openai_serving_completion, state.openai_serving_chat,
                        state.openai_serving_responses, state.openai_serving_models, state.serving_tokenization)


async def responses_sse(events: AsyncIterator[Any]) -> AsyncIterator[str]:
    """The Responses API's stream events as server-sent events, named by their type (as vLLM's
    own route sends them)."""
    async for event in events:
        yield f"event: {getattr(event, 'type', 'unknown')}\ndata: {event.model_dump_json(by_alias=True)}\n\n"


def error_body(error: Exception | ErrorResponse) -> tuple[dict[str, Any], int]:
    """vLLM's error response for an exception its serving layer raised (its own status
    mapping: client errors 4xx, the rest 500), as body and status."""
    response = error if isinstance(error, ErrorResponse) else create_error_response(error)
    return response.model_dump(), response.error.code


def wants_deltas(params: SamplingParams) -> bool:
    """Whether the serving layer streams this request (else it takes one final output)."""
    return params.output_kind != RequestOutputKind.FINAL_ONLY


class OutputBuilder:
    """A worker's chunks as the `RequestOutput`s vLLM's serving layer reads: one per chunk
    (`delta`, for streams), or all merged into one (`merge`, then `final`)."""

    def __init__(self, request_id: str, prompt_token_ids: list[int], sequences: int) -> None:
        self._request_id = request_id
        self._prompt_token_ids = prompt_token_ids
        self._unfinished = sequences
        self.final: RequestOutput | None = None

    def delta(self, chunk: GenerateChunk) -> RequestOutput:
        """The chunk as a delta output."""
        if chunk.finish_reason is not None:
            self._unfinished -= 1
        completion = CompletionOutput(
            index=chunk.index, text=chunk.text, token_ids=chunk.token_ids,
            cumulative_logprob=chunk.cumulative_logprob, logprobs=chunk.logprobs,
            finish_reason=chunk.finish_reason, stop_reason=chunk.stop_reason,
        )
        return RequestOutput(
            self._request_id, None, self._prompt_token_ids, chunk.prompt_logprobs, [completion],
            finished=self._unfinished <= 0, num_cached_tokens=chunk.cached_tokens,
        )

    def merge(self, chunk: GenerateChunk) -> None:
        """Add the chunk to `final`, the whole output so far."""
        output = self.delta(chunk)
        if self.final is None:
            self.final = output
            return
        self.final.add(output, aggregate=True)
        if chunk.cached_tokens is not None:
            self.final.num_cached_tokens = chunk.cached_tokens
