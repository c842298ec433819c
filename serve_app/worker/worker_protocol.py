"""Data that crosses the ingress -> worker boundary (pickled through a DeploymentHandle)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from placement.live import RunningRequest


@dataclass(frozen=True)
class GenerateRequest:
    """One generation: token ids already computed by the ingress, vLLM's `SamplingParams` as
    built-in types (`msgspec.to_builtins`: no vLLM import is needed to read them), and
    the request as placement sees it (its predicted length and SLOs; None without placement),
    the one type that goes on from here to the router, the worker's reports and the actor."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: dict[str, Any]
    placement: RunningRequest | None = None
    # the worker admission placed it on: the router takes it without asking the actor again
    admitted_to: str | None = None
    # vLLM's cache_salt: its prompt shares prefix-cache blocks only with prompts of the same salt
    cache_salt: str | None = None


@dataclass(frozen=True)
class GenerateChunk:
    """A streamed delta of one of the request's `n` sequences (`index`): new text and token ids,
    and the finish reason at its end. Logprobs are vLLM's own objects, passed through as they
    are (present only when asked for, so only the vLLM engine sends them)."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    index: int = 0
    stop_reason: int | str | None = None
    logprobs: Any = None  # vLLM's SampleLogprobs of these tokens, when asked for
    cumulative_logprob: float | None = None
    prompt_logprobs: Any = None  # vLLM's PromptLogprobs, on the request's first chunk when asked for
    worker_id: str | None = None  # the serving worker's id, on the last chunk
    cached_tokens: int | None = None  # prompt tokens the engine took from its prefix cache (last chunk)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class WorkerStats:
    """A worker's load, as the placement work needs it."""

    worker_id: str
    running: int = 0
    waiting: int = 0
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    block_size: int = 0
    completed: int = 0
    # tokens generated so far by each request this worker is serving
    tokens_generated: dict[str, int] = field(default_factory=dict)
