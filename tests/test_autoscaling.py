"""SLO-driven autoscaling on real Ray Serve: the placement actor's estimate sets the worker
replica count through the custom Serve autoscaling policy. Workers use the `sim` engine with
the Llama-2-70B A100 TP2 profile (a worker sustains ~1.3 req/s of 1,000-token prompts within
the SLOs), so a few requests per second need several workers on this machine."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import serve_run

pytestmark = pytest.mark.serving
APP = "scale"
ARGS = [
    "engine.kind=sim", "engine.tensor_parallel_size=2", "engine.cpus_per_rank=0.25",
    "placement.profile_family=llama-2-70b-a100", "slo.atgt_ms=100", "slo.ttft_ms=1000",
    "workers.num_workers=1", "ingress.num_cpus=0.25",
    # every request is served through the scale-up (admission would shed part of the load the
    # single starting worker cannot take; that is tests/test_overload.py)
    "placement.admission=false",
    "scaling.enabled=true", "scaling.min_workers=1", "scaling.max_workers=4", "scaling.window_s=15",
    "scaling.estimate_period_s=1", "scaling.upscale_delay_s=1", "scaling.downscale_delay_s=5",
]


def _running_workers() -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None:
        return 0
    deployment = app.deployments["LLMWorker"]
    return deployment.replica_states.get("RUNNING", 0)


def _actor_stats() -> dict:
    import ray

    from serve_app.scheduler.placement_actor import find_placement_actor

    return ray.get(find_placement_actor(APP).stats.remote())


async def _load(base: str, rate: float, duration_s: float, peak: list[int]) -> list[int]:
    async with httpx.AsyncClient(timeout=300) as http:
        async def one(i: int) -> int:
            await asyncio.sleep(i / rate)
            body = {"model": "tiny", "prompt": [100 + (i + k) % 500 for k in range(1000)], "max_tokens": 4,
                    "ignore_eos": True}
            return (await http.post(f"{base}/scale/v1/completions", json=body)).status_code

        async def watch() -> None:
            while True:
                peak.append(_running_workers())
                await asyncio.sleep(1)

        watcher = asyncio.create_task(watch())
        try:
            return await asyncio.gather(*(one(i) for i in range(int(rate * duration_s))))
        finally:
            watcher.cancel()


def test_estimate_scales_workers_up_under_load_and_down_after(ray_cluster):
    from ray import serve

    serve_run(ray_cluster, "serve_app.app:build_app", *ARGS, "--name", APP, "--route-prefix", "/scale", name=APP)
    try:
        assert _running_workers() == 1
        seen: list[int] = []
        statuses = asyncio.run(_load(ray_cluster.http, rate=3.0, duration_s=30, peak=seen))
        assert statuses == [200] * len(statuses)
        log = _actor_stats()["scaling_log"]
        assert max(e["estimate_workers"] for e in log) >= 2, log
        assert max(seen) >= 2, f"workers never scaled up: {seen}, scaling log {log}"
        # load stopped: once the window has emptied the target falls and replicas go
        deadline = time.monotonic() + 180
        while _running_workers() > 1 and time.monotonic() < deadline:
            time.sleep(2)
        assert _running_workers() == 1, _actor_stats()["scaling_log"]
        assert _actor_stats()["scaling_log"][-1]["target_workers"] == 1
    finally:
        serve.delete(APP)
