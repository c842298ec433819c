"""The placement actor through Ray: a caller that timed out on `admit` and abandoned its
request leaves nothing waiting in the actor (its queue place and its pending verdict go)."""

from __future__ import annotations

import uuid

import pytest

from placement.live import RunningRequest, WorkerReport

pytestmark = pytest.mark.serving
KV_TOKENS = 4096  # two 1000 + 1000-token requests fill the worker


def test_an_abandoned_waiting_admission_leaves_no_pending_verdict(ray_cluster) -> None:
    import time

    import ray

    from serve_app.scheduler.placement_actor import get_placement_actor

    config = {"placement": {"profile_family": "tiny-cpu", "admission": True}, "slo": {"ttft_ms": 5000, "atgt_ms": 50}}
    actor = get_placement_actor(f"abandon-{uuid.uuid4().hex[:8]}", config)
    try:
        ray.get(actor.heartbeat.remote(WorkerReport("w0", kv_capacity_tokens=KV_TOKENS)), timeout=60)
        now = time.time()
        requests = [RunningRequest(f"r{i}", now, 1000, 1000.0, 1000.0, 5.0, 0.05) for i in range(3)]
        verdicts = ray.get(actor.admit_many.remote(requests), timeout=60)
        assert [v.worker_id for v in verdicts[:2]] == ["w0", "w0"] and verdicts[2] is None  # r2 waits
        ray.get(actor.abandon.remote(["r2"]), timeout=60)
        verdict = ray.get(actor.admission.remote("r2"), timeout=10)  # answered, not left pending
        assert verdict.worker_id is None and not verdict.refused
        stats = ray.get(actor.stats.remote(), timeout=60)
        assert stats["admission_waiting"] == 0 and stats["abandoned"] == 1
    finally:
        ray.kill(actor)
