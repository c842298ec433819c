"""Overload on a real vLLM CPU worker: a burst far past what the worker's KV cache holds. The
placement actor admits what fits, lets a bounded number wait (SLO-ODBS order, see
tests/test_admission.py) and refuses the rest with 429 + Retry-After once they cannot meet
their TTFT SLO; none hangs, and once the burst is gone requests are served again."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import serve_run

pytestmark = pytest.mark.serving
APP = "overload"
MAX_WAITING = 3
TTFT_SLO_MS = 3000
# ~4,000 tokens of KV cache (1,024 bytes a token): two requests of 1,000 + 1,000 tokens fill it
KV_GIB = 4096 * 1024 / 2**30


@pytest.fixture(scope="module")
def overload_app(ray_cluster):
    from ray import serve

    serve_run(
        ray_cluster, "serve_app.app:build_app", "workers.num_workers=1", "engine.cpus_per_rank=0.5",
        f"engine.kv_cache_gib={KV_GIB}", "ingress.num_cpus=0.25", "placement.policy=aladdin",
        f"placement.max_waiting={MAX_WAITING}", f"slo.ttft_ms={TTFT_SLO_MS}",
        # past the 1 s default a request goes ahead unadmitted, and a vLLM engine prefilling on
        # a 2-core CI host can starve the actor that long: what this test checks is admission
        "placement.actor_timeout_s=30",
        "--name", APP, "--route-prefix", f"/{APP}", name=APP,
    )
    yield f"{ray_cluster.http}/{APP}"
    serve.delete(APP)


async def _burst(url: str, n: int, max_tokens: int) -> list[tuple[httpx.Response, float]]:
    async with httpx.AsyncClient(timeout=120) as http:
        async def one(k: int) -> tuple[httpx.Response, float]:
            # ~1,000 tokens with the tiny tokenizer; each prompt its own from the first word (a
            # block's hash names all before it), so prefix caching shares nothing and two of
            # them fill the KV cache
            prompt = f"request{k} " + " ".join(f"word{i}" for i in range(380))
            start = time.perf_counter()
            body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}
            response = await http.post(f"{url}/v1/completions", json=body)
            return response, time.perf_counter() - start
        return await asyncio.gather(*(one(k) for k in range(n)))


def test_burst_is_admitted_bounded_and_refused_with_retry_after(overload_app):
    warm = asyncio.run(_burst(overload_app, 1, max_tokens=4))  # the engine and the actor are up
    assert [r.status_code for r, _ in warm] == [200]
    results = asyncio.run(_burst(overload_app, 12, max_tokens=1000))
    ok = [r for r, _ in results if r.status_code == 200]
    refused = [(r, t) for r, t in results if r.status_code == 429]
    assert len(ok) + len(refused) == 12, [r.status_code for r, _ in results]
    assert 1 <= len(ok) <= 2 + MAX_WAITING
    assert len(refused) >= 12 - 2 - MAX_WAITING
    for response, took in refused:
        error = response.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "slo_unattainable"
        assert int(response.headers["retry-after"]) >= 1
        assert took < TTFT_SLO_MS / 1000 + 5  # refused by its deadline, not after queueing forever
    # the burst is over: the worker serves again, and the actor's queue is empty
    after = asyncio.run(_burst(overload_app, 2, max_tokens=8))
    assert [r.status_code for r, _ in after] == [200, 200]
    import ray

    from serve_app.scheduler.placement_actor import find_placement_actor

    stats = ray.get(find_placement_actor(APP).stats.remote())
    assert stats["admission_waiting"] == 0
    assert stats["outcomes"].get("refused", 0) == len(refused)
