"""The ingress deployment: OpenAI-compatible HTTP API (FastAPI inside Serve) and the same
operations as Python methods for DeploymentHandle callers in other Ray apps.

The ingress tokenizes (so it knows each request's input length before routing), checks the
request against the context window, and streams token deltas from a worker.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from placement.live import RequestTiming, RunningRequest
from placement.prefix_cache import prefix_of
from predictors.output_length import ChatInput, PastTurn, Prediction
from serve_app.http.api_auth import authorized, set_api_keys
from serve_app.http.body_limit import BodyLimit, set_max_body_bytes
from serve_app.config import AppConfig
from serve_app.http.errors import OpenAIError, check_model, from_validation_errors
from serve_app.metrics import record_request
from serve_app.model_source import resolve_tokenizer_dir
from serve_app.prediction.request_predictor import RequestPredictor
from serve_app.scheduler.placement_shards import PlacementShards
from serve_app.http.request_options import RequestOptions, request_options
from serve_app.http.tokenization import detokenize, load_protocol, render_chat, tokenize
from serve_app.http.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
    Usage,
    new_id,
    now,
)
from serve_app.tiny_model import CHAT_TEMPLATE
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


# Added before the key check, so it runs inside it: an unauthorized client is turned away on
# its headers, before any of its body is read.
api.add_middleware(BodyLimit)


@api.middleware("http")
async def _require_api_key(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
    """401 in OpenAI's shape for a missing or wrong key on /v1/ routes (serve_app.http.api_auth)."""
    if not authorized(request.url.path, request.headers):
        err = OpenAIError(401, "missing or incorrect API key (send Authorization: Bearer <key>)",
                          code="invalid_api_key")
        return JSONResponse(err.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return await call_next(request)


@api.middleware("http")
async def _stamp_arrival(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
    """Record when the request reached the ingress, before anything else here runs: its TTFT
    is counted from then, so time spent waiting behind other requests' tokenization counts."""
    request.state.received_s = time.time()
    return await call_next(request)


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


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def _parse(model: type[SamplingFields], request: dict[str, Any]) -> Any:
    try:
        return model.model_validate(request)
    except ValidationError as exc:
        raise from_validation_errors(list(exc.errors())) from None


class _Prepared:
    """A validated request, ready to send to a worker, with what it was predicted to need."""

    def __init__(
        self, generate: GenerateRequest, body: SamplingFields, model: str, chat: ChatInput, prediction: Prediction
    ) -> None:
        self.generate = generate
        self.body = body
        self.model = model
        self.chat = chat
        self.prediction = prediction
        self.prompt_tokens = len(generate.prompt_token_ids)
        self.worker_id: str | None = None  # the worker that served it, once known
        self.cached_tokens: int | None = None  # of its prompt, from the engine's prefix cache (last chunk)

    def extension(self) -> dict[str, Any]:
        """The `aladdin` field of responses: the prediction and the SLOs applied."""
        placed = self.generate.placement
        return {
            "predicted_output_tokens": {"mean": round(self.prediction.mean, 1), "p90": round(self.prediction.upper, 1)},
            "slo": {"ttft_ms": placed.slo_ttft_s * 1e3, "atgt_ms": placed.slo_atgt_s * 1e3},
            "worker": self.worker_id,
        }

    def headers(self) -> dict[str, str]:
        return {
            "x-aladdin-predicted-output-tokens": f"{self.prediction.mean:.1f}",
            "x-aladdin-predicted-output-tokens-p90": f"{self.prediction.upper:.1f}",
        }


@serve.deployment(name="OpenAIIngress")
@serve.ingress(api)
class OpenAIIngress:
    """HTTP: /v1/completions, /v1/chat/completions, /v1/models, /tokenize, /detokenize, /health.
    Handle: create_completion, stream_completion, create_chat_completion, stream_chat_completion,
    tokenize, detokenize.
    """

    def __init__(self, worker: DeploymentHandle, config: dict[str, Any]) -> None:
        from transformers import AutoTokenizer

        self._config = AppConfig.model_validate(config)
        self._worker = worker
        self._policy = self._config.placement.policy
        # the placement actors, looked up on first use; concurrent admissions go together
        self._shards: PlacementShards | None = None
        self._admission_failed_logged = False
        self._protocol_loaded: asyncio.Future | None = None  # vLLM's tokenize protocol, imported on first use
        # finished requests' measured latencies, sent to the placement actor in batches: they
        # close its SLO model's loop (aladdin only: the baselines promise nothing)
        self._timings: list[RequestTiming] = []
        self._timings_task: asyncio.Task | None = None
        set_api_keys(self._config.ingress.resolved_api_keys(os.environ))
        set_max_body_bytes(self._config.ingress.max_body_bytes)
        # prompts are hashed into blocks for placement's prefix caches, at the engines' block size
        self._prefix_block = self._config.engine_block_size() if self._config.models_prefix_cache else None
        self._model_name = self._config.model.name
        self._max_model_len = self._config.engine.max_model_len
        tokenizer_dir = resolve_tokenizer_dir(self._config.model)
        self._tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self._predictor = RequestPredictor(self._config.predictor, tokenizer_dir)
        self._vocab_size = len(self._tokenizer)
        if not getattr(self._tokenizer, "chat_template", None):
            logger.warning("tokenizer has no chat template; using a ChatML-style default")
            self._tokenizer.chat_template = CHAT_TEMPLATE

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
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": self._model_name,
                        "object": "model",
                        "created": now(),
                        "owned_by": "aladdin",
                        "max_model_len": self._max_model_len,
                    }
                ],
            }
        )

    @api.post("/tokenize")
    async def http_tokenize(self, body: dict[str, Any]) -> JSONResponse:
        return JSONResponse(await self.tokenize(body))

    @api.post("/detokenize")
    async def http_detokenize(self, body: dict[str, Any]) -> JSONResponse:
        return JSONResponse(await self.detokenize(body))

    @api.post("/v1/completions")
    async def http_completions(self, body: CompletionRequest, request: Request) -> Any:
        options = self._http_options(body, request)
        prepared = await self._admit(self._prepare_completion(body, options))
        if body.stream:
            return self._sse_response(self._completion_chunks(prepared), prepared.headers())
        return JSONResponse(await self._completion_response(prepared), headers=prepared.headers())

    @api.post("/v1/chat/completions")
    async def http_chat_completions(self, body: ChatCompletionRequest, request: Request) -> Any:
        options = self._http_options(body, request)
        prepared = await self._admit(self._prepare_chat(body, options))
        if body.stream:
            return self._sse_response(self._chat_chunks(prepared), prepared.headers())
        return JSONResponse(await self._chat_response(prepared), headers=prepared.headers())

    def _http_options(self, body: SamplingFields, request: Request) -> RequestOptions:
        """The request's options, and under admission a 429 at once, before it is tokenized,
        if it has already waited its whole TTFT SLO in this ingress (a burst queues requests
        here first: tokenizing and predicting them would only delay the rest)."""
        options = request_options(request.headers, getattr(request.state, "received_s", None))
        if self._config.placement.admits and options.received_s is not None:
            slo_s = self._slo_s(body, options, "ttft")
            waited = time.time() - options.received_s
            if waited > slo_s:
                retry = max(1, math.ceil(waited))
                raise OpenAIError(429, f"the server is overloaded: this request waited {waited:.1f} s to be read, past "
                                  f"its TTFT SLO; retry after {retry} s", code="slo_unattainable",
                                  headers={"Retry-After": str(retry)})
        return options

    def _slo_s(self, body: SamplingFields, options: RequestOptions, kind: str) -> float:
        """The request's `kind` ("ttft" or "atgt") SLO, s: body field, then header, then the
        configured default."""
        ms = getattr(body, f"slo_{kind}_ms") or options.slo_ms.get(kind) or getattr(self._config.slo, f"{kind}_ms")
        return ms / 1e3

    async def predictor_stats(self) -> dict[str, Any]:
        """Output-length prediction error over served requests (for metrics and tests)."""
        return self._predictor.stats()

    # ---- Python API for DeploymentHandle callers ----------------------------------------
    async def create_completion(self, request: dict[str, Any]) -> dict[str, Any]:
        """Non-streaming completion; raises OpenAIError on bad input."""
        return await self._completion_response(await self._admit(self._prepare_completion(_parse(CompletionRequest, request))))

    async def stream_completion(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Streaming completion: yields OpenAI `text_completion` chunk dicts."""
        prepared = await self._admit(self._prepare_completion(_parse(CompletionRequest, request)))
        async for chunk in self._completion_chunks(prepared):
            yield chunk

    async def create_chat_completion(self, request: dict[str, Any]) -> dict[str, Any]:
        """Non-streaming chat completion; raises OpenAIError on bad input."""
        return await self._chat_response(await self._admit(self._prepare_chat(_parse(ChatCompletionRequest, request))))

    async def stream_chat_completion(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Streaming chat completion: yields OpenAI `chat.completion.chunk` dicts."""
        prepared = await self._admit(self._prepare_chat(_parse(ChatCompletionRequest, request)))
        async for chunk in self._chat_chunks(prepared):
            yield chunk

    async def tokenize(self, request: dict[str, Any]) -> dict[str, Any]:
        """vLLM's /tokenize (serve_app.http.tokenization); raises OpenAIError on bad input."""
        await self._tokenize_protocol()
        return tokenize(self._tokenizer, request, self._model_name, self._max_model_len).model_dump()

    async def detokenize(self, request: dict[str, Any]) -> dict[str, Any]:
        """vLLM's /detokenize; raises OpenAIError on bad input."""
        await self._tokenize_protocol()
        return detokenize(self._tokenizer, request, self._model_name).model_dump()

    async def _tokenize_protocol(self) -> None:
        # vLLM's import takes seconds: off the event loop, once (the tokenizer itself stays on
        # the loop: a fast tokenizer used from two threads at once can fail "Already borrowed")
        loading = self._protocol_loaded
        if loading is None or (loading.done() and (loading.cancelled() or loading.exception() is not None)):
            loading = self._protocol_loaded = asyncio.ensure_future(asyncio.to_thread(load_protocol))  # (again)
        await asyncio.shield(loading)

    # ---- validation ---------------------------------------------------------------------
    def _prepare(
        self, body: SamplingFields, ids: list[int], max_tokens: int | None, prefix: str, chat: ChatInput,
        options: RequestOptions,
    ) -> _Prepared:
        n_prompt = len(ids)
        if max_tokens is None:
            max_tokens = self._max_model_len - n_prompt
        if n_prompt + max_tokens > self._max_model_len or max_tokens < 1:
            raise OpenAIError(
                400,
                f"This model's maximum context length is {self._max_model_len} tokens. However, "
                f"you requested {n_prompt + max_tokens} tokens ({n_prompt} in the prompt, "
                f"{max_tokens} in the completion). Please reduce the prompt or max_tokens.",
                param="max_tokens" if n_prompt < self._max_model_len else "prompt",
                code="context_length_exceeded",
            )
        prediction = self._predictor.predict(chat, max_tokens, cap=not options.benchmark)
        request_id = new_id(prefix)
        placed = RunningRequest(
            request_id=request_id,
            arrival_s=time.time() if options.received_s is None else options.received_s,
            input_len=len(ids), pred_mean=prediction.mean, pred_upper=prediction.upper,
            slo_ttft_s=self._slo_s(body, options, "ttft"), slo_atgt_s=self._slo_s(body, options, "atgt"),
            prefix=None if self._prefix_block is None else prefix_of(ids, self._prefix_block),
        )
        generate = GenerateRequest(request_id, list(ids), body.sampling(max_tokens), placed)
        return _Prepared(generate, body, self._model_name, chat, prediction)

    def _prepare_completion(self, body: CompletionRequest, options: RequestOptions = RequestOptions()) -> _Prepared:
        check_model(body.model, self._model_name)
        if isinstance(body.prompt, str):
            text = body.prompt
            ids = self._tokenizer(text).input_ids
        else:
            ids = list(body.prompt)
            if any(not 0 <= t < self._vocab_size for t in ids):
                raise OpenAIError(400, f"prompt token ids must be in [0, {self._vocab_size})", param="prompt")
            text = self._tokenizer.decode(ids)
        if not ids:
            raise OpenAIError(400, "prompt has no tokens", param="prompt")
        chat = ChatInput(prompt=text, prompt_tokens=len(ids))
        return self._prepare(body, ids, body.max_tokens, "cmpl", chat, options)

    def _prepare_chat(self, body: ChatCompletionRequest, options: RequestOptions = RequestOptions()) -> _Prepared:
        check_model(body.model, self._model_name)
        text = render_chat(self._tokenizer, body.messages)
        ids = self._tokenizer(text, add_special_tokens=False).input_ids
        # The predictor reads the latest message and the lengths of the turns before it.
        last = body.messages[-1].text
        history = tuple(
            PastTurn(m.role, len(self._tokenizer(m.text, add_special_tokens=False).input_ids))
            for m in body.messages[:-1]
        )
        chat = ChatInput(last, len(self._tokenizer(last, add_special_tokens=False).input_ids), history)
        return self._prepare(body, ids, body.max_tokens, "chatcmpl", chat, options)

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
        tokens = 0
        finish: str | None = None
        first_s = last_s = None
        for attempt in range(1, WORKER_ATTEMPTS + 1):
            stream = self._worker.options(stream=True).generate.remote(prepared.generate)
            try:
                async for chunk in stream:
                    if chunk.num_tokens:
                        last_s = time.time()
                        first_s = first_s or last_s
                    tokens += chunk.num_tokens
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
        self._predictor.record(prepared.chat, prepared.prediction, tokens, finish, prepared.body.ignore_eos)
        if first_s is not None:
            self._record_latency(prepared, first_s, last_s, tokens, finish)

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
        natural = finish == "stop" and not prepared.body.ignore_eos  # else the length says nothing
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

    async def _collect(self, prepared: _Prepared) -> tuple[str, int, str | None]:
        """The whole output. Nothing has reached the client yet, so a worker failing even
        mid-generation is retried from the start (WORKER_ATTEMPTS times, each of which may
        itself be retried before its first token)."""
        attempt = 1
        while True:
            parts: list[str] = []
            tokens = 0
            finish: str | None = None
            try:
                async for chunk in self._deltas(prepared):
                    parts.append(chunk.text)
                    tokens += chunk.num_tokens
                    finish = chunk.finish_reason or finish
            except OpenAIError as err:
                if err.code != "worker_failed" or attempt >= WORKER_ATTEMPTS:
                    raise
                attempt += 1
                logger.warning("request %s: worker failed mid-generation; starting it again",
                               prepared.generate.request_id)
                continue
            return "".join(parts), tokens, finish

    async def _completion_response(self, prepared: _Prepared) -> dict[str, Any]:
        text, tokens, finish = await self._collect(prepared)
        return {
            "id": prepared.generate.request_id,
            "object": "text_completion",
            "created": now(),
            "model": prepared.model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            "usage": Usage.of(prepared.prompt_tokens, tokens).model_dump(),
            "aladdin": prepared.extension(),
        }

    async def _chat_response(self, prepared: _Prepared) -> dict[str, Any]:
        text, tokens, finish = await self._collect(prepared)
        return {
            "id": prepared.generate.request_id,
            "object": "chat.completion",
            "created": now(),
            "model": prepared.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": Usage.of(prepared.prompt_tokens, tokens).model_dump(),
            "aladdin": prepared.extension(),
        }

    async def _chunks(
        self, prepared: _Prepared, obj: str, choice: Callable[[GenerateChunk | None], dict[str, Any]]
    ) -> AsyncIterator[dict[str, Any]]:
        base = {"id": prepared.generate.request_id, "object": obj, "created": now(), "model": prepared.model}
        tokens = 0
        first = choice(None)
        if first:
            yield {**base, "choices": [first]}
        async for chunk in self._deltas(prepared):
            tokens += chunk.num_tokens
            yield {**base, "choices": [choice(chunk)]}
        if prepared.body.include_usage:
            yield {
                **base,
                "choices": [],
                "usage": Usage.of(prepared.prompt_tokens, tokens).model_dump(),
                "aladdin": prepared.extension(),
            }

    def _completion_chunks(self, prepared: _Prepared) -> AsyncIterator[dict[str, Any]]:
        def choice(chunk: GenerateChunk | None) -> dict[str, Any]:
            if chunk is None:
                return {}
            return {"index": 0, "text": chunk.text, "logprobs": None, "finish_reason": chunk.finish_reason}

        return self._chunks(prepared, "text_completion", choice)

    def _chat_chunks(self, prepared: _Prepared) -> AsyncIterator[dict[str, Any]]:
        def choice(chunk: GenerateChunk | None) -> dict[str, Any]:
            if chunk is None:  # OpenAI opens a chat stream with the role
                return {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            delta = {"content": chunk.text} if chunk.text or not chunk.finish_reason else {}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": chunk.finish_reason}

        return self._chunks(prepared, "chat.completion.chunk", choice)

    def _sse_response(self, chunks: AsyncIterator[dict[str, Any]], headers: dict[str, str]) -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            try:
                async for chunk in chunks:
                    yield _sse(chunk)
            except OpenAIError as exc:  # the status line is already sent: report in-band
                yield _sse(exc.body())
            yield _sse("[DONE]")

        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)
