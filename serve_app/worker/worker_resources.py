"""What one worker (one engine with its TP ranks) reserves in the Ray cluster."""

from __future__ import annotations

from collections import Counter

from serve_app.config import AppConfig


def worker_bundles(config: AppConfig) -> list[dict[str, float]]:
    """One placement-group bundle per TP rank, the replica actor in bundle 0 (Ray Serve LLM's
    layout); packed onto one node (STRICT_PACK) by the worker deployment."""
    engine = config.engine
    tp = engine.tensor_parallel_size
    if engine.accelerator == "gpu":
        return [{"CPU": engine.cpus_per_rank, "GPU": 1.0}] + [{"GPU": 1.0}] * (tp - 1)
    return [{"CPU": engine.cpus_per_rank}] * tp


def worker_node_bundle(config: AppConfig) -> dict[str, float]:
    """The whole worker as one resource shape: what a node must offer to host it."""
    total: Counter[str] = Counter()
    for bundle in worker_bundles(config):
        total.update(bundle)
    return dict(total)
