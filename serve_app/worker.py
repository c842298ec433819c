"""The worker deployment: each Serve replica owns one vLLM `AsyncLLM` engine.

Tensor parallelism follows Ray Serve LLM's layout: one placement-group bundle per rank,
STRICT_PACK, the replica actor sitting in bundle 0. On GPUs the engine runs its ranks as Ray
actors in those bundles (the `ray` executor); on CPU it forks them (`mp`) onto the same node,
whose cores STRICT_PACK has reserved, and pins each rank to its own cores.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import psutil
from ray import serve

from predictors.latency.cpu_binding import cpu_rank_binding
from serve_app.config import AppConfig
from serve_app.errors import OpenAIError
from serve_app.model_source import resolve_model_dir, resolve_tokenizer_dir
from serve_app.orphan_reaper import start_reaper
from serve_app.worker_protocol import GenerateChunk, GenerateRequest, WorkerStats


def worker_deployment_options(config: AppConfig) -> dict[str, Any]:
    """Serve deployment options for the worker deployment under `config`."""
    engine = config.engine
    tp = engine.tensor_parallel_size
    if engine.accelerator == "gpu":
        bundles = [{"CPU": engine.cpus_per_rank, "GPU": 1.0}] + [{"GPU": 1.0}] * (tp - 1)
    else:
        bundles = [{"CPU": engine.cpus_per_rank}] * tp
    return {
        "num_replicas": config.workers.num_workers,
        "max_ongoing_requests": config.workers.max_ongoing_requests,
        "graceful_shutdown_timeout_s": config.workers.graceful_shutdown_timeout_s,
        "ray_actor_options": {"num_cpus": engine.cpus_per_rank, "num_gpus": 0},
        "placement_group_bundles": bundles,
        "placement_group_strategy": "STRICT_PACK",
        # Engine start (imports, weights, KV allocation) is slow; don't count it as unhealthy.
        "health_check_timeout_s": 60,
    }


def engine_kwargs(config: AppConfig) -> dict[str, Any]:
    """Keyword arguments for vLLM's AsyncEngineArgs."""
    engine = config.engine
    kwargs: dict[str, Any] = {
        "model": str(resolve_model_dir(config.model)),
        "tokenizer": str(resolve_tokenizer_dir(config.model)),
        "served_model_name": [config.model.name],
        "load_format": config.model.load_format,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "distributed_executor_backend": "ray" if engine.accelerator == "gpu" else "mp",
        "max_model_len": engine.max_model_len,
        "dtype": engine.dtype,
        "max_num_seqs": engine.max_num_seqs,
        "enable_prefix_caching": engine.enable_prefix_caching,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        "seed": engine.seed,
        "disable_log_stats": False,  # the stat logger feeds WorkerStats
        "enable_log_requests": False,
    }
    if engine.kv_cache_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = engine.kv_cache_bytes
    kwargs.update(engine.extra)
    return kwargs


@serve.deployment(name="LLMWorker")
class LLMWorker:
    """One vLLM engine behind a Serve replica; streams token deltas and reports its load."""

    async def __init__(self, config: dict[str, Any]) -> None:
        self._config = AppConfig.model_validate(config)
        engine = self._config.engine
        if engine.accelerator == "cpu" and engine.tensor_parallel_size > 1:
            os.environ.setdefault(
                "VLLM_CPU_OMP_THREADS_BIND",
                cpu_rank_binding(engine.tensor_parallel_size),
            )
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from serve_app.engine_stats import EngineSnapshot, SnapshotLogger

        self._snapshot = EngineSnapshot()
        self._engine = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**engine_kwargs(self._config)),
            stat_loggers=[partial(SnapshotLogger, snapshot=self._snapshot)],
        )
        engine_pids = [p.pid for p in psutil.Process().children()]
        if engine_pids:
            start_reaper(os.getpid(), engine_pids)
        self._tokens_generated: dict[str, int] = {}
        self._completed = 0
        self._replica_id = serve.get_replica_context().replica_id.unique_id

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        """Stream the request's output as deltas; the last chunk carries the finish reason."""
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        try:
            params = SamplingParams(**request.sampling, output_kind=RequestOutputKind.DELTA)
        except (ValueError, TypeError) as exc:
            raise OpenAIError(400, f"invalid sampling parameters: {exc}") from None
        rid = request.request_id
        self._tokens_generated[rid] = 0
        try:
            prompt = TokensPrompt(prompt_token_ids=request.prompt_token_ids)
            async for output in self._engine.generate(prompt, params, request_id=rid):
                completion = output.outputs[0]
                count = len(completion.token_ids)
                self._tokens_generated[rid] += count
                yield GenerateChunk(completion.text, count, completion.finish_reason)
            self._completed += 1
        finally:
            self._tokens_generated.pop(rid, None)

    async def stats(self) -> WorkerStats:
        """Current load: running/waiting requests, KV blocks, tokens per running request."""
        snap = self._snapshot
        return WorkerStats(
            replica_id=self._replica_id,
            running=snap.running,
            waiting=snap.waiting,
            kv_blocks_used=round(snap.kv_usage * snap.kv_blocks_total),
            kv_blocks_total=snap.kv_blocks_total,
            block_size=snap.block_size,
            completed=self._completed,
            tokens_generated=dict(self._tokens_generated),
        )

    async def record_routing_stats(self) -> dict[str, Any]:
        """Serve calls this periodically; routers read it from the replica's routing stats."""
        stats = await self.stats()
        return {
            "running": stats.running,
            "waiting": stats.waiting,
            "kv_blocks_used": stats.kv_blocks_used,
            "kv_blocks_total": stats.kv_blocks_total,
        }

    async def check_health(self) -> None:
        """Serve restarts the replica if the engine has died."""
        await self._engine.check_health()

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()
