"""The systems `make bench` compares, each deployable on the running Ray cluster with the same
model, the same number of vLLM engines and the same engine arguments:

- this app with a placement policy (`aladdin`, `p2c`, `jsq`, `rr`);
- Ray Serve LLM's `build_openai_app` with its default (power-of-two) router: `rayllm`;
- Ray Serve LLM with `PrefixCacheAffinityRouter`: `rayllm-prefix`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.config import AppConfig

APP_POLICIES = ("aladdin", "p2c", "jsq", "rr")
RAY_SERVE_LLM = {"rayllm": None, "rayllm-prefix": "ray.serve.llm.request_router.PrefixCacheAffinityRouter"}
SYSTEMS = APP_POLICIES + tuple(RAY_SERVE_LLM)


@dataclass(frozen=True)
class SystemSpec:
    """What every system gets alike."""

    workers: int = 2
    slo_ttft_ms: float = 1000.0
    slo_atgt_ms: float = 50.0
    profile_path: str | None = None  # placement profile for this app (None: the tiny-cpu family)
    stream_interval: int = 8  # vLLM engine argument (this app's default), given to every system's engines
    max_model_len: int = 2048  # vLLM engine argument, every system's (long prompts keep their prefixes)
    kv_cache_gib: float = 0.5  # KV cache per engine, every system's
    atgt_margin: float | None = None  # aladdin: a fixed packing margin (None: the adaptive budget)


def app_config(system: str, spec: SystemSpec) -> AppConfig:
    """This app's config for `system` (a placement policy); fixed size, no autoscaling."""
    overrides: dict[str, Any] = {
        "workers.num_workers": spec.workers,
        "placement.policy": system,
        "slo.ttft_ms": spec.slo_ttft_ms,
        "slo.atgt_ms": spec.slo_atgt_ms,
        "scaling.enabled": False,
        "engine.stream_interval": spec.stream_interval,
        "engine.max_model_len": spec.max_model_len,
        "engine.kv_cache_gib": spec.kv_cache_gib,
    }
    if spec.profile_path:
        overrides["placement.profile_path"] = spec.profile_path
    if spec.atgt_margin is not None:
        overrides["placement.atgt_margin"] = spec.atgt_margin
    return AppConfig.from_args(overrides)


def ray_serve_llm_app(system: str, spec: SystemSpec) -> Any:
    """Ray Serve LLM's OpenAI app on the same engines as this app's workers."""
    from ray.serve.llm import LLMConfig, build_openai_app

    from serve_app.worker.vllm_engine import engine_kwargs

    config = app_config("aladdin", spec)
    kwargs = engine_kwargs(config)
    model_dir = kwargs.pop("model")
    for key in ("served_model_name", "distributed_executor_backend"):
        kwargs.pop(key)  # Ray Serve LLM sets these itself
    deployment: dict[str, Any] = {"num_replicas": spec.workers}
    router = RAY_SERVE_LLM[system]
    if router:
        deployment["request_router_config"] = {"request_router_class": router}
    llm = LLMConfig(
        model_loading_config={"model_id": config.model.name, "model_source": model_dir},
        accelerator_config={"kind": "cpu"},
        placement_group_config={"bundles": [{"CPU": config.engine.cpus_per_rank}]},
        engine_kwargs=kwargs,
        deployment_config=deployment,
        # engines alike: this app's run without vLLM's stat logging (`disable_log_stats`),
        # which Ray Serve LLM's engine metrics would need
        log_engine_metrics=False,
    )
    return build_openai_app({"llm_configs": [llm]})


def build_system(system: str, spec: SystemSpec) -> Any:
    """The Serve application for `system`."""
    if system in APP_POLICIES:
        from serve_app.app import build_app_from_config

        return build_app_from_config(app_config(system, spec))
    if system in RAY_SERVE_LLM:
        return ray_serve_llm_app(system, spec)
    raise ValueError(f"unknown system {system!r}: one of {', '.join(SYSTEMS)}")
