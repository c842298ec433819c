"""A vLLM stat logger that keeps the engine's latest scheduler figures for the worker, and adds
up the work of its iterations for placement's latency correction.

vLLM 0.32 reports each iteration's details (`SchedulerStats.iteration_details`: prompt-chunk
requests and tokens, decoding requests, the iteration's elapsed time in the engine core) when
`enable_logging_iteration_details` is on (serve_app.worker.vllm_engine turns it on, and keeps vLLM's own
logging stat logger, which would print every iteration, off). The profile's models are linear
in prompts, tokens, squared tokens, sequences and context tokens, so the sums are all the
correction needs. The squared prompt tokens are not in the details (a chunk's attention work
depends on how much of its prompt came before it, which they do not say): the chunk tokens
are handed to the prompts being prefilled in the scheduler's order
(`engine_snapshot.PrefillProgress`). Squaring each iteration's chunk tokens instead counted
a long prompt's attention work as if each chunk were a prompt of its own (an 8k prompt in 2k
chunks at a quarter), and the prefill correction factor grew to 7-13x to cover it; adding a
prompt's whole L^2 when its first token came out put that work in a later report than the
iterations that did it, and the decode factor grew instead (BENCHMARKS.md, "Prefix cache",
real engines). The decoding batch's context is estimated as the KV cache in use (it also
holds the chunks being prefilled).

An iteration's busy time is the wall time since the previous iteration while the engine had
requests left (`EngineSnapshot.iteration_busy_s`), not vLLM's `elapsed_ms`, which times the
model's execution only: scheduling and output processing come between a request's tokens
too (on the tiny CPU engines, counting them raised the decode factor by 15-18 %:
BENCHMARKS.md, "Simulator fidelity: each run replayed on its own engines' corrections")."""

from __future__ import annotations

import time

from vllm.config import VllmConfig
from vllm.v1.metrics.loggers import StatLoggerBase
from vllm.v1.metrics.stats import IterationStats, SchedulerIterationDetails, SchedulerStats

from placement.latency_correction import EngineWork
from serve_app.worker.engine_snapshot import EngineSnapshot, PrefillProgress


def iteration_work(
    details: SchedulerIterationDetails, kv_tokens: float, prefilling: PrefillProgress, busy_s: float
) -> EngineWork:
    """One iteration's work (see the module docstring), which took `busy_s`."""
    chunks, chunk_tokens = details.num_ctx_requests, details.num_ctx_tokens
    decoding = details.num_generation_requests
    return EngineWork(
        busy_s=busy_s,
        prefill_iterations=1 if chunks else 0, prefill_prompts=chunks, prefill_tokens=chunk_tokens,
        prefill_squared_tokens=prefilling.chunks(chunks, chunk_tokens) if chunks else 0.0,
        decode_iterations=1 if decoding else 0, decode_sequences=decoding,
        decode_context_tokens=round(kv_tokens) if decoding else 0,
    )


class SnapshotLogger(StatLoggerBase):
    """Records the newest SchedulerStats into a shared `EngineSnapshot` (no I/O)."""

    def __init__(self, vllm_config: VllmConfig, engine_index: int = 0, *, snapshot: EngineSnapshot):
        self._config = vllm_config
        self._snapshot = snapshot

    def record(
        self,
        scheduler_stats: SchedulerStats | None,
        iteration_stats: IterationStats | None,
        mm_cache_stats: object | None = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is not None:
            snap = self._snapshot
            snap.running = scheduler_stats.num_running_reqs
            snap.waiting = scheduler_stats.num_waiting_reqs
            snap.kv_usage = scheduler_stats.kv_cache_usage
            details = scheduler_stats.iteration_details
            if details is not None and not details.is_dummy and details.elapsed_ms > 0:
                kv_tokens = scheduler_stats.kv_cache_usage * snap.kv_blocks_total * snap.block_size
                busy_s = snap.iteration_busy_s(time.monotonic(), details.elapsed_ms / 1000,
                                               work_left=snap.running + snap.waiting > 0)
                snap.work += iteration_work(details, kv_tokens, snap.prefilling, busy_s)

    def log_engine_initialized(self) -> None:
        cache = self._config.cache_config
        self._snapshot.kv_blocks_total = int(cache.num_gpu_blocks or 0)
        self._snapshot.block_size = int(cache.block_size)
