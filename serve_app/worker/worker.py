"""The worker deployment: each Serve replica owns one engine (serve_app.worker.engine: vLLM's
`AsyncLLM`, or the `sim` engine), streams its tokens and reports its load.

Tensor parallelism follows Ray Serve LLM's layout: one placement-group bundle per rank,
STRICT_PACK, the replica actor sitting in bundle 0 (serve_app.worker.vllm_engine starts the ranks).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve

from placement.live import WorkerReport
from placement.sharding import shard_of
from serve_app.scheduler.autoscaling import TARGET_METRIC
from serve_app.config import AppConfig
from serve_app.worker.engine import InvalidRequest, start_engine
from serve_app.worker.engine_snapshot import EngineSnapshot
from serve_app.worker.heartbeat_reports import HeartbeatReports
from serve_app.http.errors import OpenAIError
from serve_app.worker.worker_resources import worker_bundles
from serve_app.worker.worker_protocol import GenerateChunk, GenerateRequest, WorkerStats

logger = logging.getLogger("ray.serve")


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
            "request_router_class": "serve_app.scheduler.placement_router:PlacementRouter",
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
            "policy": {"policy_function": "serve_app.scheduler.autoscaling:aladdin_autoscaling_policy"},
        }
    return options


@serve.deployment(name="LLMWorker")
class LLMWorker:
    """One engine (vLLM, or `sim`) behind a Serve replica; streams token deltas, reports its
    load to the placement actor and Serve's autoscaler."""

    async def __init__(self, config: dict[str, Any]) -> None:
        self._config = AppConfig.model_validate(config)
        self._snapshot = EngineSnapshot()
        self._engine = start_engine(self._config, self._snapshot)
        self._tokens_generated: dict[str, int] = {}
        self._completed = 0
        context = serve.get_replica_context()
        self._worker_id = context.replica_id.unique_id
        # placement bookkeeping, reported to the placement actor in batched heartbeats
        self._reports = HeartbeatReports(self._worker_id)
        self._target_workers: int | None = None
        self._heartbeat: asyncio.Task | None = None
        if self._config.placement.uses_actor:
            self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop(context.app_name))

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        """Stream the request's output as deltas; the last chunk carries the finish reason and
        this replica's id."""
        rid = request.request_id
        self._tokens_generated[rid] = 0
        view = request.placement
        if view is not None:
            self._reports.started(view)
        try:
            async for chunk in self._engine_chunks(request):
                if view is not None and view.first_token_s is None and chunk.num_tokens:
                    view = self._reports.first_token(rid, time.time())
                self._tokens_generated[rid] += chunk.num_tokens
                if chunk.finish_reason:
                    chunk = dataclasses.replace(chunk, worker_id=self._worker_id)
                yield chunk
            self._completed += 1
        finally:
            self._reports.ended(rid, self._tokens_generated.pop(rid, 0))

    async def _engine_chunks(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        try:
            async for chunk in self._engine.generate(request.prompt_token_ids, request.sampling, request.request_id,
                                                     request.cache_salt):
                yield chunk
        except InvalidRequest as exc:  # raised before the first chunk
            raise OpenAIError(400, f"the engine refused the request: {exc}") from None

    async def stats(self) -> WorkerStats:
        """Current load: running/waiting requests, KV blocks, tokens per running request."""
        snap = self._snapshot
        return WorkerStats(
            worker_id=self._worker_id,
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
        (serve_app.scheduler.autoscaling)."""
        if self._target_workers is None or self._target_workers < 0:
            return {}
        return {TARGET_METRIC: float(self._target_workers)}

    def _report(self) -> WorkerReport:
        snap = self._snapshot
        work = snap.take_work()
        return self._reports.report(
            self._tokens_generated, work=work if work.busy_s > 0 else None,
            kv_capacity_tokens=(snap.kv_blocks_total * snap.block_size) or None, waiting=snap.waiting,
            kv_used_tokens=round(snap.kv_usage * snap.kv_blocks_total) * snap.block_size,
        )

    async def _heartbeat_loop(self, app_name: str) -> None:
        """Every `placement.heartbeat_s`, one batched report to the placement actor, or with
        `placement.heartbeat_relay` to this node's relay, on the node's tick."""
        from serve_app.scheduler.heartbeat_relay import get_heartbeat_relay, next_tick_s, tick_phase_s
        from serve_app.scheduler.placement_actor import get_placement_actor

        period = self._config.placement.heartbeat_s
        payload = self._config.model_dump(mode="json")
        shard = shard_of(self._worker_id, self._config.placement.shards)  # the actor that owns this worker
        node_id = ray.get_runtime_context().get_node_id() if self._config.placement.heartbeat_relay else None
        phase_s = tick_phase_s(node_id, period) if node_id is not None else None
        actor = None
        failing = False
        while True:
            now_s = time.time()
            await asyncio.sleep(period if phase_s is None else next_tick_s(now_s, period, phase_s) - now_s)
            report = self._report()
            try:
                if actor is None:
                    actor = (get_placement_actor(app_name, payload, shard) if node_id is None
                             else get_heartbeat_relay(app_name, payload, shard, node_id))
                async with asyncio.timeout(max(2.0, 8 * period)):
                    reply = await actor.heartbeat.remote(report)
            except Exception as exc:  # actor restarting or gone: keep the finished ones for later
                if report.work is not None:
                    self._snapshot.give_back_work(report.work)
                if not failing:
                    logger.warning("placement heartbeat failed (%r); retrying every %.2f s", exc, period)
                failing, actor = True, None
                self._reports.failed()
                continue
            failing = False
            self._reports.acknowledged(report, reply.get("full_report", False))
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
