"""The worker deployment: each Serve replica owns one vLLM `AsyncLLM` engine.

Tensor parallelism follows Ray Serve LLM's layout: one placement-group bundle per rank,
STRICT_PACK, the replica actor sitting in bundle 0. On GPUs the engine runs its ranks as Ray
actors in those bundles (the `ray` executor); on CPU it forks them (`mp`) onto the same node,
whose cores STRICT_PACK has reserved, and pins each rank to its own cores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import psutil
from ray import serve

from predictors.latency.cpu_binding import cpu_rank_binding
from placement.live import RunningRequest, WorkerReport
from serve_app.autoscaling import TARGET_METRIC
from serve_app.config import AppConfig
from serve_app.engine_snapshot import EngineSnapshot
from serve_app.errors import OpenAIError
from serve_app.model_source import resolve_model_dir, resolve_tokenizer_dir
from serve_app.orphan_reaper import start_reaper
from serve_app.worker_resources import worker_bundles
from serve_app.worker_protocol import GenerateChunk, GenerateRequest, WorkerStats

logger = logging.getLogger("ray.serve")
# Finished requests kept for a placement actor that does not answer; beyond this the oldest go
# (the actor drops requests a worker stops reporting anyway).
MAX_UNSENT_FINISHED = 10_000


def worker_deployment_options(config: AppConfig) -> dict[str, Any]:
    """Serve deployment options for the worker deployment under `config`."""
    engine = config.engine
    options: dict[str, Any] = {
        "num_replicas": config.workers.num_workers,
        "max_ongoing_requests": config.workers.max_ongoing_requests,
        "graceful_shutdown_timeout_s": config.graceful_shutdown_timeout_s,
        "ray_actor_options": {"num_cpus": engine.cpus_per_rank, "num_gpus": 0},
        "placement_group_bundles": worker_bundles(config),
        "placement_group_strategy": "STRICT_PACK",
        # Engine start (imports, weights, KV allocation) is slow; don't count it as unhealthy.
        "health_check_timeout_s": 60,
    }
    if config.placement.uses_actor:
        options["request_router_config"] = {
            "request_router_class": "serve_app.placement_router:PlacementRouter",
            "request_router_kwargs": {"config": config.model_dump(mode="json")},
        }
    if config.scaling.enabled:
        scaling = config.scaling
        options["num_replicas"] = "auto"
        options["autoscaling_config"] = {
            "min_replicas": scaling.min_workers,
            "max_replicas": scaling.max_workers,
            "initial_replicas": min(max(config.workers.num_workers, scaling.min_workers), scaling.max_workers),
            "upscale_delay_s": scaling.upscale_delay_s,
            "downscale_delay_s": scaling.downscale_delay_s,
            "metrics_interval_s": min(10.0, scaling.estimate_period_s),
            "look_back_period_s": max(2 * scaling.estimate_period_s, 10.0),
            "policy": {"policy_function": "serve_app.autoscaling:aladdin_autoscaling_policy"},
        }
    return options


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
        "stream_interval": engine.stream_interval,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        "seed": engine.seed,
        # the engine still collects stats for the custom stat logger that feeds WorkerStats
        # (AsyncLLM turns them on for it); this only drops vLLM's default logging stat logger,
        # which with iteration details on prints a line per iteration
        "disable_log_stats": True,
        "enable_log_requests": False,
        # each iteration's work for placement's latency correction (serve_app.engine_stats)
        "enable_logging_iteration_details": True,
    }
    if engine.kv_cache_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = engine.kv_cache_bytes
    kwargs.update(engine.extra)
    return kwargs


@serve.deployment(name="LLMWorker")
class LLMWorker:
    """One engine (vLLM, or `sim`) behind a Serve replica; streams token deltas, reports its
    load to the placement actor and Serve's autoscaler."""

    async def __init__(self, config: dict[str, Any]) -> None:
        self._config = AppConfig.model_validate(config)
        self._snapshot = EngineSnapshot()
        if self._config.engine.kind == "sim":
            self._engine = self._start_sim_engine()
        else:
            self._engine = self._start_vllm_engine()
        self._tokens_generated: dict[str, int] = {}
        self._completed = 0
        context = serve.get_replica_context()
        self._replica_id = context.replica_id.unique_id
        # placement bookkeeping, reported to the placement actor in batched heartbeats
        self._running: dict[str, RunningRequest] = {}
        self._finished: list[tuple[str, int]] = []
        self._target_workers: int | None = None
        self._heartbeat: asyncio.Task | None = None
        if self._config.placement.uses_actor:
            self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop(context.app_name))

    def _start_vllm_engine(self) -> Any:
        engine = self._config.engine
        if engine.accelerator == "cpu" and engine.tensor_parallel_size > 1:
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_rank_binding(engine.tensor_parallel_size))
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from serve_app.engine_stats import SnapshotLogger

        llm = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**engine_kwargs(self._config)),
            stat_loggers=[partial(SnapshotLogger, snapshot=self._snapshot)],
        )
        engine_pids = [p.pid for p in psutil.Process().children()]
        if engine_pids:
            start_reaper(os.getpid(), engine_pids)
        return llm

    def _start_sim_engine(self) -> Any:
        """Tokens on the schedule of the placement profile, no model (see serve_app.sim_engine)."""
        from serve_app.placement_actor import placement_profile
        from serve_app.sim_engine import SimEngine

        engine = self._config.engine
        return SimEngine(
            placement_profile(self._config), max_num_seqs=engine.max_num_seqs,
            max_model_len=engine.max_model_len, snapshot=self._snapshot, seed=engine.seed,
        )

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        """Stream the request's output as deltas; the last chunk carries the finish reason and
        this replica's id."""
        rid = request.request_id
        self._tokens_generated[rid] = 0
        view = request.placement_view()
        if view is not None:
            self._running[rid] = view
        try:
            async for chunk in self._engine_chunks(request):
                if view is not None and view.first_token_s is None and chunk.num_tokens:
                    self._running[rid] = view = dataclasses.replace(view, first_token_s=time.time())
                self._tokens_generated[rid] += chunk.num_tokens
                if chunk.finish_reason:
                    chunk = dataclasses.replace(chunk, worker=self._replica_id)
                yield chunk
            self._completed += 1
        finally:
            tokens = self._tokens_generated.pop(rid, 0)
            if self._running.pop(rid, None) is not None:
                self._finished.append((rid, tokens))
                del self._finished[:-MAX_UNSENT_FINISHED]

    async def _engine_chunks(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        if self._config.engine.kind == "sim":
            try:
                async for chunk in self._engine.generate(request.prompt_token_ids, request.sampling, request.request_id):
                    yield chunk
            except ValueError as exc:  # the sim engine validates the sampling parameters as it starts
                raise OpenAIError(400, f"invalid sampling parameters: {exc}") from None
            return
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        try:
            params = SamplingParams(**request.sampling, output_kind=RequestOutputKind.DELTA)
        except (ValueError, TypeError) as exc:
            raise OpenAIError(400, f"invalid sampling parameters: {exc}") from None
        prompt = TokensPrompt(prompt_token_ids=request.prompt_token_ids)
        async for output in self._engine.generate(prompt, params, request_id=request.request_id):
            completion = output.outputs[0]
            yield GenerateChunk(completion.text, len(completion.token_ids), completion.finish_reason)

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
        """Serve calls this periodically; routers read it from the replica's routing stats
        (the `WorkerStats` fields)."""
        return dataclasses.asdict(await self.stats())

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's autoscaler reads the placement actor's worker target from here
        (serve_app.autoscaling)."""
        if self._target_workers is None or self._target_workers < 0:
            return {}
        return {TARGET_METRIC: float(self._target_workers)}

    def _report(self) -> WorkerReport:
        snap = self._snapshot
        generated = self._tokens_generated
        work = snap.take_work()
        return WorkerReport(
            worker_id=self._replica_id,
            running=tuple(dataclasses.replace(r, generated=generated.get(rid, 0)) for rid, r in self._running.items()),
            finished=tuple(self._finished),
            kv_capacity_tokens=(snap.kv_blocks_total * snap.block_size) or None,
            waiting=snap.waiting,
            kv_used_tokens=round(snap.kv_usage * snap.kv_blocks_total) * snap.block_size,
            work=work if work.busy_s > 0 else None,
        )

    async def _heartbeat_loop(self, app_name: str) -> None:
        """Every `placement.heartbeat_s`, one batched report to the placement actor."""
        from serve_app.placement_actor import get_placement_actor

        period = self._config.placement.heartbeat_s
        payload = self._config.model_dump(mode="json")
        actor = None
        failing = False
        while True:
            await asyncio.sleep(period)
            report = self._report()
            try:
                if actor is None:
                    actor = get_placement_actor(app_name, payload)
                reply = await asyncio.wait_for(actor.heartbeat.remote(report), timeout=max(2.0, 8 * period))
            except Exception as exc:  # actor restarting or gone: keep the finished ones for later
                if report.work is not None:
                    self._snapshot.give_back_work(report.work)
                if not failing:
                    logger.warning("placement heartbeat failed (%r); retrying every %.2f s", exc, period)
                failing, actor = True, None
                continue
            failing = False
            del self._finished[: len(report.finished)]
            self._target_workers = reply.get("target_workers")

    async def check_health(self) -> None:
        """Serve restarts the replica if the engine has died."""
        await self._engine.check_health()

    def __del__(self) -> None:
        heartbeat = getattr(self, "_heartbeat", None)
        if heartbeat is not None:
            heartbeat.cancel()
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()
