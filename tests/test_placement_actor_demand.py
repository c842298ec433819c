"""The placement actor through Ray: shard 0 keeps every shard's demand, and shows it in its
stats even when no worker hashes to it (no heartbeat of its own ever runs its estimate)."""

from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.serving


def test_shard_zero_without_workers_learns_the_other_shards_demand(ray_cluster) -> None:
    import ray

    from serve_app.scheduler.placement_actor import get_placement_actor

    config = {"placement": {"profile_family": "tiny-cpu", "shards": 2}}
    actor = get_placement_actor(f"demand-{uuid.uuid4().hex[:8]}", config)
    try:
        elsewhere = ray.get(actor.demand.remote(1, 3, 4), timeout=60)  # shard 1 needs 3, holds 4
        assert tuple(elsewhere) == (0, 0)  # nothing but shard 1 has reported
        stats = ray.get(actor.stats.remote(), timeout=60)
        assert stats["residents"] == {} and stats["demand_elsewhere"] == {"workers": 3, "held": 4}
    finally:
        ray.kill(actor)
