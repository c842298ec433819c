"""A vLLM stat logger that keeps the engine's latest scheduler figures for the worker."""

from __future__ import annotations

from vllm.config import VllmConfig
from vllm.v1.metrics.loggers import StatLoggerBase
from vllm.v1.metrics.stats import IterationStats, SchedulerStats

from serve_app.engine_snapshot import EngineSnapshot


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
            self._snapshot.running = scheduler_stats.num_running_reqs
            self._snapshot.waiting = scheduler_stats.num_waiting_reqs
            self._snapshot.kv_usage = scheduler_stats.kv_cache_usage

    def log_engine_initialized(self) -> None:
        cache = self._config.cache_config
        self._snapshot.kv_blocks_total = int(cache.num_gpu_blocks or 0)
        self._snapshot.block_size = int(cache.block_size)
