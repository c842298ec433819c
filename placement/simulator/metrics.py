"""Per-request timings and the summary a simulation reports."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from placement.state import Request


def meets_slos(ttft_s: float, atgt_s: float, slo_ttft_s: float, slo_atgt_s: float) -> bool:
    """A request meets its SLOs when both its TTFT and its ATGT are within them (the one
    definition the simulator, the planner's goals and the serving benchmark share)."""
    return ttft_s <= slo_ttft_s and atgt_s <= slo_atgt_s


@dataclass(slots=True)
class RequestRecord:
    """One trace request as the simulator follows it."""

    request: Request  # what placement sees (lengths as predicted, SLOs)
    output_len: int  # the true reply length
    produced: int = 0  # tokens generated so far (the first comes from the prefill)
    first_token_s: float = math.nan
    finish_s: float = math.nan
    preemptions: int = 0
    worker_id: str | None = None
    # split-phase mode: KV link time, and when the KV reached the decode worker
    transfer_s: float = 0.0
    kv_arrived_s: float = math.nan
    # the serving path's latency outside the engine (WorkerProfile.serving_overhead_at_s): it
    # shifts what a client sees, not the engine's schedule
    overhead_s: float = 0.0
    refused: bool = False  # turned away by admission (never finishes; counts as missed)
    # prefix caching: prompt tokens its first prefill took from the engine's cache, and what
    # placement expected of the worker it chose
    cached_tokens: int = 0
    predicted_cached_tokens: int = 0

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.request.arrival_s + self.overhead_s

    @property
    def atgt_s(self) -> float:
        """Decode time per generated token after the first; 0 for one-token replies."""
        if self.output_len <= 1:
            return 0.0
        return (self.finish_s - self.first_token_s) / (self.output_len - 1)

    @property
    def slos_met(self) -> bool:
        return meets_slos(self.ttft_s, self.atgt_s, self.request.slo_ttft_s, self.request.slo_atgt_s)


@dataclass(frozen=True)
class Summary:
    """What `aladdin simulate --json` reports."""

    requests: int
    finished: int
    attainment: float  # fraction of requests with both SLOs met (unfinished ones count as missed)
    ttft_p50_s: float
    ttft_p99_s: float
    atgt_p50_s: float
    atgt_p99_s: float
    preemptions: int
    truncated: int
    gpu_seconds: float
    makespan_s: float
    workers_peak: int
    gpu_timeline: list[tuple[float, int]] = field(default_factory=list)  # (time, GPUs held)
    refused: int = 0  # requests admission turned away
    # prefix caching: prompt tokens served from the engines' caches over all prompt tokens of
    # finished requests, and what placement expected (None without prefix caching)
    prefix_hit_rate: float | None = None
    predicted_prefix_hit_rate: float | None = None

    def to_dict(self, timeline: bool = False) -> dict:
        out = asdict(self)
        if not timeline:
            out.pop("gpu_timeline")
        return out


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else math.nan


def summarize(
    records: Sequence[RequestRecord],
    *,
    truncated: int,
    gpu_seconds: float,
    workers_peak: int,
    gpu_timeline: list[tuple[float, int]],
    prefix_caching: bool = False,
) -> Summary:
    """Attainment, TTFT/ATGT percentiles and counters over finished requests."""
    done = [r for r in records if not math.isnan(r.finish_s)]
    prompt_tokens = sum(r.request.input_len for r in done)
    ttft = np.array([r.ttft_s for r in done])
    atgt = np.array([r.atgt_s for r in done if r.output_len > 1])
    met = sum(1 for r in done if r.slos_met)
    return Summary(
        requests=len(records),
        finished=len(done),
        attainment=met / len(records) if records else math.nan,
        ttft_p50_s=_pct(ttft, 50),
        ttft_p99_s=_pct(ttft, 99),
        atgt_p50_s=_pct(atgt, 50),
        atgt_p99_s=_pct(atgt, 99),
        preemptions=sum(r.preemptions for r in records),
        truncated=truncated,
        gpu_seconds=gpu_seconds,
        makespan_s=max((r.finish_s for r in done), default=0.0),
        workers_peak=workers_peak,
        gpu_timeline=gpu_timeline,
        refused=sum(1 for r in records if r.refused),
        prefix_hit_rate=sum(r.cached_tokens for r in done) / prompt_tokens if prefix_caching and done else None,
        predicted_prefix_hit_rate=(sum(r.predicted_cached_tokens for r in done) / prompt_tokens
                                   if prefix_caching and done else None),
    )
