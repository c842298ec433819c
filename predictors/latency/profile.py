"""The worker profile: one JSON file per (model, hardware, tensor-parallel degree).

It holds the fitted latency models and the KV-cache size of one worker. The simulator and the
placement code both evaluate these classes, so each formula lives here once. The per-call
methods use plain float arithmetic (no numpy): placement evaluates them for every candidate
worker on every request.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def prefill_seconds(c0, cp, c1, c2, total_tokens, total_squared_tokens, prompts):
    """The prefill formula on its coefficients, for floats or numpy arrays alike (a placement
    table evaluates it for every worker at once): c0 + cp x prompts + c1 x sum(l) + c2 x sum(l^2)."""
    return c0 + cp * prompts + c1 * total_tokens + c2 * total_squared_tokens


def chunked_extra_s(c0, queued_tokens, input_len, chunk_tokens, step_s):
    """What chunked prefill adds to a TTFT over the queued prompts and the newcomer's run as
    (at most) two prefill batches: the iterations their tokens need at `chunk_tokens` a time,
    each with the decoding batch's step and a prefill fixed cost (two of which the batches
    already paid, one when nothing is queued). Floats or numpy arrays alike."""
    iterations = np.ceil((queued_tokens + input_len) / np.maximum(chunk_tokens, 1))
    return (iterations - 1 - (queued_tokens > 0)) * c0 + iterations * step_s


class PrefillModel(_Frozen):
    """Prefill time of one batch: c0 + cp * prompts + c1 * sum(l) + c2 * sum(l^2), in seconds.

    cp covers per-prompt work that does not scale with length (sampling, bookkeeping, a
    kernel launch per sequence on CPU); c1 the token-linear work (projections, MLP,
    all-reduce); c2 the attention term, which grows with the square of each prompt's length.
    """

    c0_s: float = Field(ge=0, description="fixed cost of a prefill iteration, s")
    cp_s_per_prompt: float = Field(0.0, ge=0, description="cost per prompt in the batch, s")
    c1_s_per_token: float = Field(ge=0, description="cost per prompt token, s")
    c2_s_per_token_sq: float = Field(ge=0, description="cost per squared prompt length, s")

    def time_from_sums(self, total_tokens: float, total_squared_tokens: float, prompts: int = 1) -> float:
        """Prefill time of a batch of `prompts` prompts given sum(l) and sum(l^2); 0 if empty."""
        if total_tokens <= 0:
            return 0.0
        return prefill_seconds(
            self.c0_s, self.cp_s_per_prompt, self.c1_s_per_token, self.c2_s_per_token_sq,
            total_tokens, total_squared_tokens, prompts,
        )

    def uncached_time_s(self, input_len: int, cached_tokens: int = 0) -> float:
        """Prefill time of one prompt whose first `cached_tokens` come from the prefix cache:
        its other tokens are computed, attending over the whole prompt (the squared term grows
        from cached^2 to input^2, as for a chunk after the ones before it)."""
        return self.time_from_sums(input_len - cached_tokens, input_len * input_len - cached_tokens * cached_tokens)

    def time_s(self, input_lens: Sequence[int]) -> float:
        """Prefill time of one batch holding prompts of these lengths."""
        total = 0
        squares = 0
        for n in input_lens:
            total += n
            squares += n * n
        return self.time_from_sums(total, squares, len(input_lens))


class DecodeModel(_Frozen):
    """Time of one decode step: d0 + d1 * batch_size + d2 * context_tokens, in seconds.

    context_tokens is the sum over the batch of tokens already in each request's KV cache
    (prompt plus tokens generated so far): decode attention reads all of them.
    """

    d0_s: float = Field(ge=0, description="fixed cost of a decode step (weight reads), s")
    d1_s_per_seq: float = Field(ge=0, description="cost per request in the batch, s")
    d2_s_per_context_token: float = Field(ge=0, description="cost per context token, s")

    def step_s(self, batch_size: int, context_tokens: int) -> float:
        """Time of one decode step; 0 for an empty batch."""
        if batch_size <= 0:
            return 0.0
        return self.d0_s + self.d1_s_per_seq * batch_size + self.d2_s_per_context_token * context_tokens


class KVCacheModel(_Frozen):
    """KV cache of one worker (all tensor-parallel ranks together)."""

    block_size: int = Field(gt=0, description="tokens per KV block")
    num_blocks: int = Field(ge=0, description="KV blocks the worker holds")
    bytes_per_token: int = Field(gt=0, description="2 x layers x kv_heads x head_dim x dtype bytes")

    @property
    def capacity_tokens(self) -> int:
        """Tokens the cache holds: num_blocks x block_size."""
        return self.num_blocks * self.block_size

    def blocks_for(self, tokens: int) -> int:
        """Blocks a request of this many tokens occupies (whole blocks)."""
        return -(-tokens // self.block_size)


class FitReport(_Frozen):
    """How well the fitted models reproduce measurements they were not fitted on."""

    prefill_mape_pct: float = Field(ge=0, description="mean absolute percentage error, held-out prefill points")
    decode_mape_pct: float = Field(ge=0, description="mean absolute percentage error, held-out decode points")
    prefill_points: int = Field(ge=0, description="prefill grid points, fitted and held out together")
    decode_points: int = Field(ge=0, description="decode grid points, fitted and held out together")
    held_out_fraction: float = Field(ge=0, le=1)


class WorkerProfile(_Frozen):
    """Everything placement needs to know about one worker configuration."""

    schema_version: int = SCHEMA_VERSION
    model: str = Field(description="model name, e.g. llama-2-7b or tiny")
    hardware: str = Field(description="accelerator short name used in the family name: a100, h100, cpu")
    tp: int = Field(gt=0, description="tensor-parallel degree (GPUs per worker)")
    max_model_len: int = Field(gt=0, description="longest prompt + output the worker accepts")
    source: str = Field(description="where the numbers come from (engine run or operator data)")
    notes: str = ""
    prefill: PrefillModel
    decode: DecodeModel
    kv: KVCacheModel
    fit: FitReport
    serving_overhead_s: float = Field(
        0.0, ge=0, description="latency the serving path adds to every TTFT outside the engine (HTTP, "
        "tokenization, routing, streaming); 0 for an engine profile, fitted by a served profile",
    )
    serving_overhead_per_request_s: float = Field(
        0.0, ge=0, description="what each request in flight in the deployment adds to that latency (the "
        "proxy and ingress are shared by all workers); fitted by a served profile",
    )

    @property
    def family(self) -> str:
        """Family name `<model>-<hardware>` this profile belongs to."""
        return family_name(self.model, self.hardware)

    def prefill_time_s(self, input_lens: Sequence[int]) -> float:
        """Prefill time of one batch holding prompts of these lengths, s."""
        return self.prefill.time_s(input_lens)

    def decode_step_s(self, batch_size: int, context_tokens: int) -> float:
        """One decode step of `batch_size` requests holding `context_tokens` in all, s."""
        return self.decode.step_s(batch_size, context_tokens)

    def ttft_s(
        self, input_len: int, queued_tokens: int = 0, queued_squared_tokens: int = 0, queued_prompts: int = 1,
        *, chunk_tokens: int | None = None, step_s: float = 0.0, cached_tokens: int = 0,
    ) -> float:
        """TTFT a new request would see: the prefill queued ahead of it, run as one batch
        (given by sum(l), sum(l^2) and the number of its prompts), then its own prefill (of
        the tokens the prefix cache does not hold, `cached_tokens`), plus the serving path's
        fixed latency. With chunked prefill (`chunk_tokens` prompt tokens per iteration beside
        the decoding batch, whose step takes `step_s`), the prompts take `chunked_iterations`
        iterations, each paying the prefill's fixed cost and the step."""
        ttft = self.prefill.time_from_sums(
            queued_tokens, queued_squared_tokens, queued_prompts
        ) + (self.prefill.uncached_time_s(input_len, cached_tokens) + self.serving_overhead_s)
        if chunk_tokens is None:
            return ttft
        return ttft + chunked_extra_s(self.prefill.c0_s, queued_tokens, input_len - cached_tokens, chunk_tokens, step_s)

    def serving_overhead_at_s(self, in_flight: int) -> float:
        """The serving path's latency outside the engine with `in_flight` other requests in the
        deployment (placement's TTFT check uses the idle value, `serving_overhead_s`)."""
        return self.serving_overhead_s + self.serving_overhead_per_request_s * in_flight

    def atgt_s(self, batch_size: int, context_tokens: int) -> float:
        """Average token generation time under this batch: every step gives each request one
        token, so it is the decode step time. Interleaved prefills are not included."""
        return self.decode.step_s(batch_size, context_tokens)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write this profile as JSON, creating parent folders."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path


# vLLM 0.32's max_num_batched_tokens for its OpenAI server with chunked prefill (EngineArgs:
# H100/H200-class GPUs 8192, A100 and other GPUs 2048, CPU 2048 per rank).
_CHUNKED_TOKEN_BUDGET = {"h100": 8192}
_DEFAULT_CHUNKED_TOKEN_BUDGET = 2048


def vllm_token_budget(profile: WorkerProfile) -> int:
    """The prompt-and-decode tokens per iteration vLLM 0.32 schedules by default with chunked
    prefill on this profile's hardware."""
    per_rank = profile.tp if profile.hardware == "cpu" else 1
    return _CHUNKED_TOKEN_BUDGET.get(profile.hardware, _DEFAULT_CHUNKED_TOKEN_BUDGET) * per_rank


def family_name(model: str, hardware: str) -> str:
    """Profile family name: `<model>-<hardware>`, e.g. `llama-2-7b-a100`."""
    return f"{model}-{hardware}"


def load_profile(path: str | Path) -> WorkerProfile:
    """Read and validate one profile JSON file."""
    return WorkerProfile.model_validate_json(Path(path).read_text())
