"""The node plugin: keeps the Ray cluster autoscaler's resource request at one worker-sized
bundle per planned worker, so GPU nodes are added before replicas go pending and released when
demand falls (the request shrinks; the autoscaler removes nodes idle past its timeout).

Modes (`scaling.node_scaling`): `off`; `advisory` logs each change of the estimate and leaves
the cluster alone (the estimate is exported as a metric either way); `on` calls
`ray.autoscaler.sdk.request_resources`.
"""

from __future__ import annotations

import logging

from serve_app.config import AppConfig
from serve_app.worker.worker_resources import worker_node_bundle

logger = logging.getLogger("ray.serve")


class NodeScaler:
    """Turns minimal-worker estimates into cluster resource requests (see module docstring)."""

    def __init__(self, config: AppConfig) -> None:
        self.mode = config.scaling.node_scaling
        self.bundle = worker_node_bundle(config)
        self.requested: int | None = None  # workers' worth of resources asked for

    def apply(self, target: int) -> None:
        """Ask for `target` workers' worth of resources (the placement controller's scaling
        target), if that changed."""
        if self.mode == "off":
            return
        if target == self.requested:
            return
        if self.mode == "advisory":
            logger.info("node plugin (advisory): would request %d x %s", target, self.bundle)
        else:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[dict(self.bundle) for _ in range(target)])
            logger.info("node plugin: requested %d x %s from the cluster autoscaler", target, self.bundle)
        self.requested = target

    def release(self) -> None:
        """Withdraw the request (the application is going away)."""
        if self.mode == "on" and self.requested:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[])
        self.requested = None
