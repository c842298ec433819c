"""Data that crosses the ingress -> worker boundary (pickled through a DeploymentHandle)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from placement.live import RunningRequest


@dataclass(frozen=True)
class PlacementHints:
    """What placement needs to know of a request before it runs."""

    predicted_output_mean: float
    predicted_output_p90: float
    slo_ttft_s: float
    slo_atgt_s: float
    arrival_s: float  # wall clock (time.time()) when the ingress received the request


@dataclass(frozen=True)
class GenerateRequest:
    """One generation: token ids already computed by the ingress, SamplingParams kwargs, and
    the request's predicted length and SLOs."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: dict[str, Any]
    hints: PlacementHints | None = None

    def placement_view(self) -> RunningRequest | None:
        """What placement needs to know of this request (None without placement hints)."""
        hints = self.hints
        if hints is None:
            return None
        return RunningRequest(
            request_id=self.request_id, arrival_s=hints.arrival_s, input_len=len(self.prompt_token_ids),
            pred_mean=hints.predicted_output_mean, pred_upper=hints.predicted_output_p90,
            slo_ttft_s=hints.slo_ttft_s, slo_atgt_s=hints.slo_atgt_s,
        )


@dataclass(frozen=True)
class GenerateChunk:
    """A streamed delta: new text, how many tokens it holds, and the finish reason at the end."""

    text: str
    num_tokens: int
    finish_reason: str | None = None
    worker: str | None = None  # the serving replica's id, on the last chunk


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
