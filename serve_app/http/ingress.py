"""The ingress deployment: OpenAI-compatible HTTP API (FastAPI inside Serve) and the same
operations as Python methods for DeploymentHandle callers in other Ray apps.

vLLM's serving layer does the OpenAI work (serve_app.http.vllm_frontend); the ingress adds
what placement needs around each generation it asks for: the prompt's tokens (counted before
routing), the length prediction, per-request SLOs, admission (429 before any output), the
worker placement chose, the measured latencies, and the `aladdin` response field and headers.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import os
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve import context as serve_context
from ray.serve._private.utils import generate_request_id
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from placement.live import RequestTiming, RunningRequest
from placement.prefix_cache import prefix_of
from predictors.output_length import ChatInput, PastTurn, Prediction
from serve_app.http.api_auth import RequireApiKey, set_api_keys
from serve_app.http.body_limit import BodyLimit, set_max_body_bytes
from serve_app.config import AppConfig
from serve_app.http.errors import OpenAIError, check_unicode, from_validation_errors
from serve_app.metrics import record_request
from serve_app.model_source import resolve_tokenizer_dir
from serve_app.prediction.request_predictor import RequestPredictor
from serve_app.scheduler.placement_shards import PlacementShards
from serve_app.http.request_options import MAX_SLO_MS, RequestOptions, request_options
from serve_app.worker.worker_protocol import GenerateChunk, GenerateRequest

logger = logging.getLogger("ray.serve")
HEALTH_PROBE_TIMEOUT_S = 5.0
# tries of a request on workers when one fails before the client has seen any output
WORKER_ATTEMPTS = 3
# Timings kept for a placement actor that does not answer; beyond this the oldest go.
MAX_UNSENT_TIMINGS = 10_000

api = FastAPI(title="aladdin", description="OpenAI-compatible API served by Aladdin on Ray Serve")


@api.exception_handler(OpenAIError)
async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


class StampArrival:
    """ASGI middleware: records when a request reached the ingress (`request.state.received_s`),
    before anything else here runs: its TTFT is counted from then, so time spent waiting
    behind other requests' tokenization counts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["received_s"] = time.time()
        await self.app(scope, receive, send)


# Outermost last: the arrival is stamped first; an unauthorized client is turned away on its
# headers, before the body limit reads any of its body.
api.add_middleware(BodyLimit)
api.add_middleware(RequireApiKey)
api.add_middleware(StampArrival)


@api.exception_handler(HTTPException)
async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    """FastAPI's own errors in OpenAI's shape instead of `{"detail": ...}`: an unknown route or
    method, and its one 400, a body that json.loads refused other than as malformed JSON (not
    UTF-8, nested too deep, a number too long)."""
    if exc.status_code == 400:
        err = OpenAIError(400, "request body is not valid UTF-8 JSON", code="invalid_json")
    else:
        err = OpenAIError(exc.status_code, str(exc.detail))
    return JSONResponse(err.body(), status_code=exc.status_code, headers=exc.headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    err = from_validation_errors(list(exc.errors()))
    return JSONResponse(err.body(), status_code=err.status)


def _json(body: dict[str, Any] | Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise OpenAIError(400, "request body must be a JSON object", code="invalid_json")
    return body


@dataclass
class _Prepared:
    """One generation of a call (a call has one per prompt), ready to send to a worker, with
    what it was predicted to need."""

    generate: GenerateRequest
    chat: ChatInput
    prediction: Prediction
    ignore_eos: bool
    worker_id: str | None = None  # the worker that served it, once known
    cached_tokens: int | None = None  # of its prompt, from the engine's prefix cache (last chunk)

    def extension(self) -> dict[str, Any]:
        """Its part of the `aladdin` field of responses: the prediction and the SLOs applied."""
        placed = self.generate.placement
        return {
            # the id placement knows it by: vLLM's, `<response id>-<prompt index>` for completions
            "request_id": self.generate.request_id,
            "predicted_output_tokens": {"mean": round(self.prediction.mean, 1), "p90": round(self.prediction.upper, 1)},
            "slo": {"ttft_ms": placed.slo_ttft_s * 1e3, "atgt_ms": placed.slo_atgt_s * 1e3},
            "worker": self.worker_id,
        }


@dataclass
class _Call:
    """One HTTP or handle call, as its generations (vLLM's serving layer calls the engine
    client once per prompt) share it: its options and SLOs, the predictor's view of its
    prompt, and what they report back to the route: their placements and an error that
    must answer the call (a 429 or 503 before any output)."""

    options: RequestOptions
    slo_ttft_s: float
    slo_atgt_s: float
    # the predictor's input, from the prompt vLLM rendered (its ids, and text where known)
    chat_input: Callable[[dict[str, Any], list[int]], ChatInput]
    placed: list[_Prepared] = field(default_factory=list)
    error: OpenAIError | None = None
    started: bool = False  # a generation has output something (the stream can start)

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def extension(self) -> dict[str, Any] | list[dict[str, Any]]:
        """The `aladdin` field: one prompt's, or a list in prompt order for several."""
        parts = [p.extension() for p in self.placed]  # vLLM starts them in prompt order
        return parts[0] if len(parts) == 1 else parts

    def headers(self) -> dict[str, str]:
        if not self.placed:
            return {}
        prediction = self.placed[0].prediction
        return {
            "x-aladdin-predicted-output-tokens": f"{prediction.mean:.1f}",
            "x-aladdin-predicted-output-tokens-p90": f"{prediction.upper:.1f}",
        }


def _message_text(message: dict[str, Any]) -> str:
    """A chat message's text: its content string, or its text parts joined."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _response_turns(request: Any) -> list[tuple[str, str]]:
    """A Responses API request's conversation as (role, text) turns: its `instructions` as
    the system turn, then its `input` (a string, or message items)."""
    turns = [("system", request.instructions)] if request.instructions else []
    if isinstance(request.input, str):
        return [*turns, ("user", request.input)]
    for item in request.input:
        message = item if isinstance(item, dict) else item.model_dump()
        if "content" in message:
            turns.append((str(message.get("role", "user")), _message_text(message)))
    return turns


def _sse_json(event: str) -> dict[str, Any] | None:
    """The JSON of one `data: ...` server-sent event (None for `[DONE]`)."""
    data = event.removeprefix("data: ").strip()
    return None if data == "[DONE]" else json.loads(data)


async def _handle_chunks(events: AsyncIterator[str], chunk_model: type) -> AsyncIterator[Any]:
    """A stream's events as vLLM chunk models (`chunk_model`) for a handle caller; an in-band
    error event (the stream had started) raised as OpenAIError, as a failed call before it
    would be."""
    async for event in events:
        chunk = _sse_json(event)
        if chunk is None:
            continue
        if "error" in chunk and "choices" not in chunk:
            error = chunk["error"]
            status = error.get("code") if isinstance(error.get("code"), int) else 500
            raise OpenAIError(status, error.get("message", ""), param=error.get("param"), body=chunk)
        yield chunk_model.model_validate(chunk)


@serve.deployment(name="OpenAIIngress")
@serve.ingress(api)
class OpenAIIngress:
    """HTTP: /v1/completions, /v1/chat/completions, /v1/responses, /v1/models, /tokenize,
    /detokenize, /health.
    Handle: create_completion, stream_completion, create_chat_completion, stream_chat_completion,
    tokenize, detokenize.

    The OpenAI work (validation, chat templates, sampling parameters, logprobs, n, echo,
    structured outputs, tool calls, responses) is vLLM's serving layer
    (serve_app.http.vllm_frontend); each generation it asks for runs through `_outputs`:
    predict, admit, place, stream from a worker.
    """

    async def __init__(self, worker: DeploymentHandle, config: dict[str, Any]) -> None:
        self._config = AppConfig.model_validate(config)
        self._worker = worker
        self._policy = self._config.placement.policy
        # the placement actors, looked up on first use; concurrent admissions go together
        self._shards: PlacementShards | None = None
        self._admission_failed_logged = False
        # finished requests' measured latencies, sent to the placement actor in batches: they
        # close its SLO model's loop (aladdin only: the baselines promise nothing)
        self._timings: list[RequestTiming] = []
        self._timings_task: asyncio.Task | None = None
        set_api_keys(self._config.ingress.resolved_api_keys(os.environ))
        set_max_body_bytes(self._config.ingress.max_body_bytes)
        # prompts are hashed into blocks for placement's prefix caches, at the engines' block size
        self._prefix_block = self._config.engine_block_size() if self._config.models_prefix_cache else None
        tokenizer_dir = resolve_tokenizer_dir(self._config.model)
        self._predictor = RequestPredictor(self._config.predictor, tokenizer_dir)
        # vLLM's import takes seconds: off the event loop
        frontend = await asyncio.to_thread(importlib.import_module, "serve_app.http.vllm_frontend")
        self._vllm = frontend
        self._frontend = await frontend.start_frontend(self._config, self._outputs)
        self._tokenizer = self._frontend.completion.renderer.get_tokenizer()

    # ---- HTTP routes -------------------------------------------------------------------
    @api.get("/health")
    async def health(self) -> JSONResponse:
        """200 once a worker answers; 503 while none can (e.g. engines still starting)."""
        probe = self._worker.stats.remote()
        try:
            async with asyncio.timeout(HEALTH_PROBE_TIMEOUT_S):
                await asyncio.shield(probe)
        except Exception:  # no replica in time, or it failed: not healthy either way
            probe.cancel()
            err = OpenAIError(503, "no worker is ready", code="no_ready_worker")
            return JSONResponse(err.body(), status_code=503)
        return JSONResponse({"status": "ok"})

    @api.get("/v1/models")
    async def models(self) -> JSONResponse:
        return JSONResponse((await self._frontend.models.show_available_models()).model_dump())

    @api.post("/tokenize")
    async def http_tokenize(self, body: Any = Body(...)) -> JSONResponse:
        return JSONResponse((await self.tokenize(_json(body))).model_dump())

    @api.post("/detokenize")
    async def http_detokenize(self, body: Any = Body(...)) -> JSONResponse:
        return JSONResponse((await self.detokenize(_json(body))).model_dump())

    @api.post("/v1/completions")
    async def http_completions(self, request: Request, body: Any = Body(...)) -> Any:
        options = self._http_options(_json(body), request)  # a request held too long is shed unread
        parsed = self._parse(self._vllm.PlacedCompletionRequest, body)
        call = self._completion_call(parsed, options)
        result = await self._serve(self._frontend.completion.create_completion, parsed, call)
        return self._http_response(result, call)

    @api.post("/v1/chat/completions")
    async def http_chat_completions(self, request: Request, body: Any = Body(...)) -> Any:
        options = self._http_options(_json(body), request)  # a request held too long is shed unread
        parsed = self._parse(self._vllm.PlacedChatCompletionRequest, body)
        call = self._chat_call(parsed, options)
        result = await self._serve(self._frontend.chat.create_chat_completion, parsed, call)
        return self._http_response(result, call)

    @api.post("/v1/responses")
    async def http_responses(self, request: Request, body: Any = Body(...)) -> Any:
        options = self._http_options(_json(body), request)  # a request held too long is shed unread
        parsed = self._parse(self._vllm.PlacedResponsesRequest, body)
        call = self._turns_call(parsed, options, _response_turns(parsed))
        result = await self._serve(self._create_response, parsed, call)
        return self._http_response(result, call)

    async def _create_response(self, request: Any, raw_request: Any) -> Any:
        result = await self._frontend.responses.create_responses(request, raw_request)
        return self._vllm.responses_sse(result) if isinstance(result, AsyncIterator) else result

    def _http_response(self, result: Any, call: _Call) -> Any:
        """A response model as JSON (as vLLM's routes send it, the `aladdin` field with it), a
        stream's events as server-sent events."""
        if isinstance(result, AsyncIterator):
            return StreamingResponse(result, media_type="text/event-stream", headers=call.headers())
        return JSONResponse(result.model_dump(mode="json", by_alias=True), headers=call.headers())

    def _http_options(self, body: dict[str, Any], request: Request) -> RequestOptions:
        """The request's options, and under admission a 429 at once, before its body is
        validated or tokenized, if it has already waited its whole TTFT SLO (a burst queues
        requests in front of the ingress: reading them would only delay the rest). `body` is
        the raw JSON; a TTFT SLO in it that validation will refuse skips the shed (a 400 then)."""
        options = request_options(request.headers, getattr(request.state, "received_s", None))
        if self._config.placement.admits and options.received_s is not None:
            raw = body.get("slo_ttft_ms")
            if raw is not None and (isinstance(raw, bool) or not isinstance(raw, (int, float))
                                    or not 0 < raw <= MAX_SLO_MS):
                return options
            slo_s = (raw or options.slo_ms.get("ttft") or self._config.slo.ttft_ms) / 1e3
            waited = time.time() - options.received_s
            if waited > slo_s:
                retry = max(1, math.ceil(waited))
                raise OpenAIError(429, f"the server is overloaded: this request waited {waited:.1f} s to be read, past "
                                  f"its TTFT SLO; retry after {retry} s", code="slo_unattainable",
                                  headers={"Retry-After": str(retry)})
        return options

    def _slo_s(self, body: Any, options: RequestOptions, kind: str) -> float:
        """The request's `kind` ("ttft" or "atgt") SLO, s: body field, then header, then the
        configured default."""
        ms = getattr(body, f"slo_{kind}_ms") or options.slo_ms.get(kind) or getattr(self._config.slo, f"{kind}_ms")
        return ms / 1e3

    async def predictor_stats(self) -> dict[str, Any]:
        """Output-length prediction error over served requests (for metrics and tests)."""
        return self._predictor.stats()

    # ---- Python API for DeploymentHandle callers ----------------------------------------
    async def create_completion(self, request: dict[str, Any] | Any) -> Any:
        """Non-streaming completion: vLLM's CompletionRequest (or its dict) in, its
        CompletionResponse out (with the `aladdin` field); raises OpenAIError on bad input."""
        return await self._completion(request, stream=False)

    async def stream_completion(self, request: dict[str, Any] | Any) -> AsyncIterator[Any]:
        """Streaming completion: yields vLLM's CompletionStreamResponse chunks."""
        async for chunk in _handle_chunks(await self._completion(request, stream=True),
                                          self._vllm.CompletionStreamResponse):
            yield chunk

    async def create_chat_completion(self, request: dict[str, Any] | Any) -> Any:
        """Non-streaming chat completion: vLLM's ChatCompletionRequest (or its dict) in, its
        ChatCompletionResponse out (with the `aladdin` field); raises OpenAIError on bad input."""
        return await self._chat(request, stream=False)

    async def stream_chat_completion(self, request: dict[str, Any] | Any) -> AsyncIterator[Any]:
        """Streaming chat completion: yields vLLM's ChatCompletionStreamResponse chunks."""
        async for chunk in _handle_chunks(await self._chat(request, stream=True),
                                          self._vllm.ChatCompletionStreamResponse):
            yield chunk

    def _completion(self, request: Any, *, stream: bool) -> Awaitable[Any]:
        return self._handle_call(request, self._vllm.PlacedCompletionRequest, self._completion_call,
                                 self._frontend.completion.create_completion, stream=stream)

    def _chat(self, request: Any, *, stream: bool) -> Awaitable[Any]:
        return self._handle_call(request, self._vllm.PlacedChatCompletionRequest, self._chat_call,
                                 self._frontend.chat.create_chat_completion, stream=stream)

    async def tokenize(self, request: dict[str, Any] | Any) -> Any:
        """vLLM's /tokenize (its TokenizeResponse); raises OpenAIError on bad input."""
        vllm = self._vllm
        chat = isinstance(request, vllm.TokenizeChatRequest) or (isinstance(request, dict) and "messages" in request)
        parsed = self._parse(vllm.TokenizeChatRequest if chat else vllm.TokenizeCompletionRequest, request)
        return await self._answer(self._frontend.tokenization.create_tokenize(parsed, None))

    async def detokenize(self, request: dict[str, Any] | Any) -> Any:
        """vLLM's /detokenize (its DetokenizeResponse); raises OpenAIError on bad input."""
        parsed = self._parse(self._vllm.DetokenizeRequest, request)
        return await self._answer(self._frontend.tokenization.create_detokenize(parsed, None))

    async def _handle_call(self, request: Any, model: type, make_call: Callable[[Any, RequestOptions], _Call],
                           create: Callable[..., Awaitable[Any]], *, stream: bool) -> Any:
        parsed = self._parse(model, request, stream=stream)
        return await self._serve(create, parsed, make_call(parsed, RequestOptions()))

    # ---- serving through vLLM's layer ---------------------------------------------------
    def _parse(self, model: type, request: Any, **fields: Any) -> Any:
        """`request` (a dict, the model, or vLLM's model it extends) validated as `model`, with
        `fields` set (vLLM checks e.g. stream options against `stream` as it validates); 400
        when it is not valid."""
        if isinstance(request, model):
            for name, value in fields.items():
                setattr(request, name, value)
            return request
        if isinstance(request, BaseModel):  # e.g. vLLM's CompletionRequest: what was set in it
            request = request.model_dump(exclude_unset=True)
        request = _json(request)
        if fields:
            request = {**request, **fields}
        check_unicode(request)
        try:
            return model.model_validate(request)
        except ValidationError as exc:
            raise from_validation_errors(list(exc.errors())) from None
        except Exception as exc:  # vLLM's checks across fields raise its own errors
            raise self._vllm_error(exc) from None

    async def _answer(self, pending: Awaitable[Any]) -> Any:
        """A vLLM serving call's response model; its ErrorResponse (or an exception it raised)
        as OpenAIError with vLLM's status and body."""
        try:
            result = await pending
        except OpenAIError:
            raise
        except Exception as exc:
            raise self._vllm_error(exc) from None
        if isinstance(result, self._vllm.ErrorResponse):
            raise self._vllm_error(result)
        return result

    def _vllm_error(self, error: Any) -> OpenAIError:
        body, status = self._vllm.error_body(error)
        info = body["error"]
        if status >= 500:
            logger.warning("vLLM's serving layer failed a request (%s): %s", status, info.get("message"))
        return OpenAIError(status, info.get("message", ""), param=info.get("param"), body=body)

    async def _serve(self, create: Callable[..., Awaitable[Any]], request: Any, call: _Call) -> Any:
        """Run vLLM's `create` for `request` under `call`. A response comes back as vLLM's
        response model with the `aladdin` field; a stream as its server-sent events, started only once a
        generation has produced output (vLLM's Responses API sends events before it starts
        one), so that an error before any output (429, 400, 503) is a status, not an event."""
        token = self._vllm.current_call.set(call)
        try:
            try:
                result = await create(request, None)
            except Exception as exc:
                call.check()
                raise exc if isinstance(exc, OpenAIError) else self._vllm_error(exc) from None
            call.check()
            if isinstance(result, self._vllm.ErrorResponse):
                raise self._vllm_error(result)
            if not isinstance(result, AsyncIterator):
                result.aladdin = call.extension()  # vLLM's response models take extra fields
                return result
            held: list[str] = []
            while not call.started and (event := await anext(result, None)) is not None:
                held.append(event)
            call.check()
        finally:
            self._vllm.current_call.reset(token)
        return self._events(held, result, call)

    async def _events(self, held: list[str], rest: AsyncIterator[str], call: _Call) -> AsyncIterator[str]:
        """A stream's events (those `_serve` held first), the usage event (when asked for)
        carrying the `aladdin` field. Each later one is awaited under `call` too: a batch's
        later generations may start after the first has output."""
        pending = held.pop(0) if held else None
        while pending is not None:
            if '"choices":[]' in pending and '"usage"' in pending:
                chunk = _sse_json(pending)
                chunk["aladdin"] = call.extension()
                pending = f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
            yield pending
            if held:
                pending = held.pop(0)
                continue
            token = self._vllm.current_call.set(call)
            try:
                pending = await anext(rest, None)
            finally:
                self._vllm.current_call.reset(token)

    def _completion_call(self, body: Any, options: RequestOptions) -> _Call:
        def chat_input(prompt: dict[str, Any], ids: list[int]) -> ChatInput:
            text = prompt.get("prompt")
            return ChatInput(prompt=self._tokenizer.decode(ids) if text is None else text, prompt_tokens=len(ids))

        return _Call(options, self._slo_s(body, options, "ttft"), self._slo_s(body, options, "atgt"), chat_input)

    def _chat_call(self, body: Any, options: RequestOptions) -> _Call:
        return self._turns_call(body, options, [(m.get("role", "user"), _message_text(m)) for m in body.messages])

    def _turns_call(self, body: Any, options: RequestOptions, turns: list[tuple[str, str]]) -> _Call:
        """A call whose predictor input is a conversation's (role, text) turns: the predictor
        reads the latest and the lengths of those before it."""
        def chat_input(prompt: dict[str, Any], ids: list[int]) -> ChatInput:
            def count(text: str) -> int:
                return len(self._tokenizer(text, add_special_tokens=False).input_ids)

            history = tuple(PastTurn(role, count(text)) for role, text in turns[:-1])
            last = turns[-1][1] if turns else ""
            return ChatInput(last, count(last), history)

        return _Call(options, self._slo_s(body, options, "ttft"), self._slo_s(body, options, "atgt"), chat_input)

    def _prepare(self, call: _Call, prompt: dict[str, Any], params: Any, request_id: str) -> _Prepared:
        ids = list(prompt["prompt_token_ids"])
        salt = prompt.get("cache_salt")
        max_tokens = max(1, params.max_tokens or 1)
        chat = call.chat_input(prompt, ids)
        prediction = self._predictor.predict(chat, max_tokens, cap=not call.options.benchmark)
        placed = RunningRequest(
            request_id=request_id,
            arrival_s=time.time() if call.options.received_s is None else call.options.received_s,
            input_len=len(ids), pred_mean=prediction.mean, pred_upper=prediction.upper,
            slo_ttft_s=call.slo_ttft_s, slo_atgt_s=call.slo_atgt_s,
            prefix=None if self._prefix_block is None else prefix_of(ids, self._prefix_block, salt),
            sequences=params.n,
        )
        generate = GenerateRequest(request_id, ids, msgspec.to_builtins(params), placed, cache_salt=salt)
        return _Prepared(generate, chat, prediction, params.ignore_eos)

    async def _outputs(self, prompt: dict[str, Any], params: Any, request_id: str) -> AsyncIterator[Any]:
        """The engine client's `generate` (vLLM's serving layer calls it once per prompt): predict,
        admit, place and stream from a worker, as vLLM `RequestOutput`s (deltas for a stream,
        else one final output). An error before the call's first output is left on the call
        for its route to answer as a status; once a stream is on the wire (a worker failing
        mid-stream, a batch's later prompt refused) it ends with vLLM's retryable 503 event."""
        call = self._vllm.current_call.get()
        try:
            prepared = self._prepare(call, prompt, params, request_id)
            call.placed.append(prepared)
            await self._admit(prepared)
        except OpenAIError as err:
            call.error = err
            if call.started and self._vllm.wants_deltas(params):  # another prompt's output is on the wire
                raise self._vllm.RetryableRequestError(err.message) from None
            return
        if not self._vllm.wants_deltas(params):
            try:
                final = await self._collect(prepared)
            except OpenAIError as err:
                call.error = err
                return
            call.started = True
            yield final
            return
        outputs = self._vllm.OutputBuilder(request_id, prepared.generate.prompt_token_ids, params.n)
        started = False
        try:
            async for chunk in self._deltas(prepared):
                started = call.started = True
                yield outputs.delta(chunk)
        except OpenAIError as err:
            if not started:
                call.error = err
                return
            raise self._vllm.RetryableRequestError(err.message) from None

    # ---- admission ----------------------------------------------------------------------
    async def _admit(self, prepared: _Prepared) -> _Prepared:
        """Wait for the placement actor to admit the request (placement.admission); 429 with
        Retry-After when it cannot meet its TTFT SLO. If the actor cannot answer, the request
        goes ahead unadmitted: admission must not take serving down with it."""
        placement = self._config.placement
        if not placement.admits:
            return prepared
        placed = prepared.generate.placement
        # the actor answers by the request's admission deadline; past that it is unreachable
        longest_wait_s = min(placed.slo_ttft_s, placement.max_wait_s or placed.slo_ttft_s)
        shards = self._placement_shards()
        shard = None
        try:
            shard, verdict = await shards.admit(placed)  # with shards, the roomier of two
            if verdict is None:  # it waits: the actor answers when it leaves the queue
                async with asyncio.timeout(longest_wait_s + placement.actor_timeout_s):
                    verdict = await shards.actor(shard).admission.remote(prepared.generate.request_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # actor restarting or overloaded: serve unadmitted
            if shard is not None:  # a failed admit has forgotten its shard already
                shards.forget(shard)
            if not self._admission_failed_logged:
                logger.warning("admission unavailable (%r); requests go ahead unadmitted (logged once)", exc)
                self._admission_failed_logged = True
            return prepared
        if verdict.refused:
            retry = max(1, math.ceil(verdict.retry_after_s))
            raise OpenAIError(
                429, f"the server cannot start this request within its TTFT SLO ({verdict.reason}); "
                f"retry after {retry} s", code="slo_unattainable", headers={"Retry-After": str(retry)},
            )
        prepared.generate = replace(prepared.generate, admitted_to=verdict.worker_id)
        return prepared

    def _placement_shards(self) -> PlacementShards:
        if self._shards is None:
            self._shards = PlacementShards(serve.get_replica_context().app_name, self._config.model_dump(mode="json"))
        return self._shards

    # ---- generation ---------------------------------------------------------------------
    async def _deltas(self, prepared: _Prepared) -> AsyncIterator[GenerateChunk]:
        """The request's output from a worker. A worker that fails before the first chunk is
        reported to the placement actor and the request is sent again (another worker); one
        that fails after it ends the request with 503 `worker_failed`."""
        tokens = 0  # of all its sequences
        # its first sequence's, for the predictor and the measured latencies (with n > 1 the
        # others run in the same batch)
        first_tokens = 0
        finish: str | None = None
        first_s = last_s = None
        for attempt in range(1, WORKER_ATTEMPTS + 1):
            stream = self._worker_stream(prepared.generate)
            try:
                async for chunk in stream:
                    tokens += chunk.num_tokens
                    if chunk.index == 0:
                        if chunk.num_tokens:
                            last_s = time.time()
                            first_s = first_s or last_s
                        first_tokens += chunk.num_tokens
                        finish = chunk.finish_reason or finish
                    prepared.worker_id = chunk.worker_id or prepared.worker_id
                    if chunk.cached_tokens is not None:
                        prepared.cached_tokens = chunk.cached_tokens
                    yield chunk
                break
            except OpenAIError:
                raise
            except asyncio.CancelledError:
                stream.cancel()
                raise
            except Exception as exc:  # a worker died or the engine failed
                request_id = prepared.generate.request_id
                self._report_worker_failure(request_id)
                if tokens == 0 and attempt < WORKER_ATTEMPTS:
                    # placement forgot that worker: the retry goes where the actor says now
                    prepared.generate = replace(prepared.generate, admitted_to=None)
                    logger.warning("request %s: worker failed before its first token (%r); retrying on another "
                                   "worker (attempt %d of %d)", request_id, exc, attempt + 1, WORKER_ATTEMPTS)
                    continue
                logger.warning("request %s failed on a worker: %r", request_id, exc)
                raise OpenAIError(503, "the worker serving this request failed; retry", code="worker_failed") from None
        self._predictor.record(prepared.chat, prepared.prediction, first_tokens, finish, prepared.ignore_eos)
        if first_s is not None:
            self._record_latency(prepared, first_s, last_s, first_tokens, finish)

    def _worker_stream(self, request: GenerateRequest) -> Any:
        """The worker call for `request`, under a Serve internal request id of its own: the
        placement router binds a replica to a call by that id (exact matching), and the calls
        of one HTTP request's several prompts would otherwise share it and all but one never
        be routed. (Cancelling the call is ours: `_deltas` cancels it when its caller goes.)"""
        context = serve_context._get_serve_request_context()
        own = replace(context, _internal_request_id=generate_request_id())
        token = serve_context._serve_request_context.set(own)
        try:
            return self._worker.options(stream=True).generate.remote(request)
        finally:
            serve_context._serve_request_context.reset(token)

    def _report_worker_failure(self, request_id: str) -> None:
        """Tell the placement actor, without waiting, that the worker running `request_id`
        failed: it stops placing there until that worker reports again."""
        if not self._config.placement.uses_actor:
            return
        shards = self._placement_shards()
        for shard in range(shards.count):  # the one placing it knows it
            try:
                shards.actor(shard).worker_failed.remote(request_id)
            except Exception:  # the actor forgets silent workers by itself anyway
                shards.forget(shard)

    def _record_latency(self, prepared: _Prepared, first_s: float, last_s: float, tokens: int, finish: str | None) -> None:
        """TTFT, ATGT and SLO outcome of a finished request, as the client saw them here."""
        placed = prepared.generate.placement
        natural = finish == "stop" and not prepared.ignore_eos  # else the length says nothing
        atgt = (last_s - first_s) / (tokens - 1) if tokens > 1 else None
        if self._config.placement.slo_aware:
            self._report_timing(RequestTiming(prepared.generate.request_id, first_s - placed.arrival_s, atgt or 0.0,
                                              tokens, prepared.cached_tokens))
        record_request(
            ttft_s=first_s - placed.arrival_s,
            atgt_s=atgt,
            slo_ttft_s=placed.slo_ttft_s, slo_atgt_s=placed.slo_atgt_s,
            predicted_tokens=prepared.prediction.mean if natural else None,
            actual_tokens=tokens, policy=self._policy,
        )

    def _report_timing(self, timing: RequestTiming) -> None:
        """Queue a finished request's timing for the next batch to the placement actor."""
        self._timings.append(timing)
        del self._timings[:-MAX_UNSENT_TIMINGS]
        if self._timings_task is None or self._timings_task.done():
            self._timings_task = asyncio.get_running_loop().create_task(self._send_timings())

    async def _send_timings(self) -> None:
        """Send the queued timings every `placement.heartbeat_s` while there are any; a failed
        call drops its batch (the loop's estimates need no single request) and never fails one.
        With shards every shard gets the batch: each keeps the requests it placed."""
        period = self._config.placement.heartbeat_s
        shards = self._placement_shards()
        while self._timings:
            await asyncio.sleep(period)
            batch, self._timings = self._timings, []
            await asyncio.gather(*(self._send_timings_to(shards, shard, batch, period) for shard in range(shards.count)))

    async def _send_timings_to(self, shards: PlacementShards, shard: int, batch: list[RequestTiming],
                               period: float) -> None:
        try:
            async with asyncio.timeout(max(2.0, 8 * period)):
                await shards.actor(shard).observe.remote(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # restarting or gone: look it up again next time
            shards.forget(shard)
            logger.debug("placement timings not sent to shard %d (%r)", shard, exc)

    async def _collect(self, prepared: _Prepared) -> Any:
        """The whole output, as one vLLM `RequestOutput`. Nothing has reached the client yet,
        so a worker failing even mid-generation is retried from the start (WORKER_ATTEMPTS
        times, each of which may itself be retried before its first token)."""
        attempt = 1
        request = prepared.generate
        while True:
            outputs = self._vllm.OutputBuilder(request.request_id, request.prompt_token_ids,
                                               request.sampling.get("n", 1))
            try:
                async for chunk in self._deltas(prepared):
                    outputs.merge(chunk)
            except OpenAIError as err:
                if err.code != "worker_failed" or attempt >= WORKER_ATTEMPTS:
                    raise
                attempt += 1
                logger.warning("request %s: worker failed mid-generation; starting it again", request.request_id)
                continue
            return outputs.final
