"""Application builder: `serve run serve_app.app:build_app [key=value ...]` or a Serve YAML."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.config import AppConfig
from serve_app.ingress import OpenAIIngress
from serve_app.worker import LLMWorker, worker_deployment_options


def build_app_from_config(config: AppConfig) -> Application:
    """The Serve application for a validated config: ingress -> worker deployment."""
    payload = config.model_dump()
    worker = LLMWorker.options(**worker_deployment_options(config)).bind(payload)
    return OpenAIIngress.options(
        num_replicas=config.ingress.num_replicas,
        max_ongoing_requests=config.ingress.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.ingress.num_cpus},
    ).bind(worker, payload)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Serve application builder. `args` follow AppConfig; dotted keys are accepted."""
    return build_app_from_config(AppConfig.from_args(args))
