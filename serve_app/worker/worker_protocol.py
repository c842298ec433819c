"""Data that crosses the ingress -> worker boundary (pickled through a DeploymentHandle)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from placement.live import RunningRequest


@dataclass(frozen=True)
class GenerateRequest:
    """One generation: token ids already computed by the ingress, SamplingParams kwargs, and
    the request as placement sees it (its predicted length and SLOs; None without placement),
    the one type that goes on from here to the router, the worker's reports and the actor."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: dict[str, Any]
    placement: RunningRequest | None = None
    # the worker admission placed it on: the router takes it without asking the actor again
    admitted_to: str | None = None


@dataclass(frozen=True)
class GenerateChunk:
    """A streamed delta: new text, how many tokens it holds, and the finish reason at the end."""

    text: str
    num_tokens: int
    finish_reason: str | None = None
    worker_id: str | None = None  # the serving worker's id, on the last chunk
    cached_tokens: int | None = None  # prompt tokens the engine took from its prefix cache (last chunk)


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
