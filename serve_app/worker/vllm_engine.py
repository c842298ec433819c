"""The vLLM engine behind a worker: an `AsyncLLM` started from the application's config, its
output streamed as `GenerateChunk` deltas (serve_app.worker.engine's interface).

On GPUs the engine runs its tensor-parallel ranks as Ray actors in the replica's placement
group bundles (the `ray` executor); on CPU it forks them (`mp`) onto the same node, whose cores
STRICT_PACK has reserved, and pins each rank to its own cores.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import psutil

from predictors.latency.cpu_binding import cpu_rank_binding
from serve_app.config import AppConfig
from serve_app.worker.engine import InvalidRequest
from serve_app.worker.engine_snapshot import EngineSnapshot
from serve_app.model_source import resolve_model_dir, resolve_tokenizer_dir
from serve_app.worker.orphan_reaper import start_reaper
from serve_app.worker.worker_protocol import GenerateChunk


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
        # each iteration's work for placement's latency correction (serve_app.worker.engine_stats)
        "enable_logging_iteration_details": True,
    }
    if engine.kv_cache_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = engine.kv_cache_bytes
    kwargs.update(engine.extra)
    return kwargs


class VllmEngine:
    """`AsyncLLM` behind the worker's engine interface; its iteration stats feed `snapshot`."""

    def __init__(self, config: AppConfig, snapshot: EngineSnapshot) -> None:
        engine = config.engine
        if engine.accelerator == "cpu" and engine.tensor_parallel_size > 1:
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_rank_binding(engine.tensor_parallel_size))
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from serve_app.worker.engine_stats import SnapshotLogger

        self._snapshot = snapshot  # the stat logger keeps it current; generate tracks prefills in it
        self._llm = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**engine_kwargs(config)), stat_loggers=[partial(SnapshotLogger, snapshot=snapshot)],
        )
        engine_pids = [p.pid for p in psutil.Process().children()]
        if engine_pids:
            start_reaper(os.getpid(), engine_pids)

    async def generate(self, prompt_token_ids: list[int], sampling: dict[str, Any],
                       request_id: str, cache_salt: str | None = None) -> AsyncIterator[GenerateChunk]:
        """See `serve_app.worker.engine.Engine.generate`."""
        import msgspec
        from vllm import SamplingParams, TokensPrompt
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind

        try:
            params = msgspec.convert(sampling, SamplingParams)
            # deltas whatever the client asked: the worker counts each token as it comes
            params.output_kind = RequestOutputKind.DELTA
        except (ValueError, TypeError, msgspec.ValidationError) as exc:
            raise InvalidRequest(str(exc)) from None
        prompt = TokensPrompt(prompt_token_ids=prompt_token_ids)
        if cache_salt is not None:
            prompt["cache_salt"] = cache_salt
        # its chunks' attention work is counted as the engine schedules them (engine_stats)
        prefilling = self._snapshot.prefilling
        prefilling.add(request_id, len(prompt_token_ids))
        try:
            outputs = self._llm.generate(prompt, params, request_id=request_id)
            first = True
            while True:
                try:
                    output = await anext(outputs)
                except StopAsyncIteration:
                    return
                except (VLLMClientError, ValueError) as exc:  # the engine's checks of the request
                    if not first:
                        raise
                    raise InvalidRequest(str(exc)) from None
                prefilling.done(request_id)
                for completion in output.outputs:
                    cached = output.num_cached_tokens if completion.finish_reason else None
                    yield GenerateChunk(
                        completion.text, list(completion.token_ids), completion.finish_reason,
                        index=completion.index, stop_reason=completion.stop_reason,
                        logprobs=completion.logprobs, cumulative_logprob=completion.cumulative_logprob,
                        prompt_logprobs=output.prompt_logprobs if first else None, cached_tokens=cached,
                    )
                first = False
        finally:
            prefilling.done(request_id)

    async def check_health(self) -> None:
        await self._llm.check_health()

    def shutdown(self) -> None:
        self._llm.shutdown()
