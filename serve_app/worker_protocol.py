"""Data that crosses the ingress -> worker boundary (pickled through a DeploymentHandle)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PlacementHints:
    """What placement needs to know of a request before it runs."""

    predicted_output_mean: float
    predicted_output_p90: float
    slo_ttft_s: float
    slo_atgt_s: float


@dataclass(frozen=True)
class GenerateRequest:
    """One generation: token ids already computed by the ingress, SamplingParams kwargs, and
    the request's predicted length and SLOs."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: dict[str, Any]
    hints: PlacementHints | None = None


@dataclass(frozen=True)
class GenerateChunk:
    """A streamed delta: new text, how many tokens it holds, and the finish reason at the end."""

    text: str
    num_tokens: int
    finish_reason: str | None = None


@dataclass
class WorkerStats:
    """A replica's load, as the placement work needs it."""

    replica_id: str
    running: int = 0
    waiting: int = 0
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    block_size: int = 0
    completed: int = 0
    # tokens generated so far by each request this replica is serving
    tokens_generated: dict[str, int] = field(default_factory=dict)
