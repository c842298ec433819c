"""Application builder: `serve run serve_app.app:build_app [key=value ...]` or a Serve YAML."""

from __future__ import annotations

from typing import Any

import click
from ray.serve import Application
from ray.serve.exceptions import RayServeException

from serve_app.config import AppConfig, ConfigError
from serve_app.http.ingress import OpenAIIngress
from serve_app.worker.worker import LLMWorker, worker_deployment_options


def build_app_from_config(config: AppConfig) -> Application:
    """The Serve application for a validated config: ingress -> worker deployment."""
    payload = config.model_dump()
    worker = LLMWorker.options(**worker_deployment_options(config)).bind(payload)
    return OpenAIIngress.options(
        num_replicas=config.ingress.num_replicas,
        max_ongoing_requests=config.ingress.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.ingress.num_cpus},
    ).bind(worker, payload)


class InvalidAppArgs(click.ClickException, RayServeException):
    """Bad builder arguments, reported as the ConfigError's lines alone: `serve run` prints a
    ClickException as one `Error:` message and exits, and Serve's controller puts a
    RayServeException's text (no traceback, no build retries) in the application's status."""


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Serve application builder. `args` follow AppConfig; dotted keys are accepted."""
    try:
        config = AppConfig.from_args(args)
        config.check_deployable()
    except ConfigError as err:
        raise InvalidAppArgs(str(err)) from None
    return build_app_from_config(config)
