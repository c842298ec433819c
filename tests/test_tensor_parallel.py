"""A worker with tensor_parallel_size=2 (two bundles, STRICT_PACK, two CPU ranks) serves,
deployed with `serve run serve_app.app:build_app` and builder arguments. It also runs with
`load_format=dummy` (random weights, architecture only), which must reach vLLM."""

import httpx
import pytest

from tests.conftest import serve_run

pytestmark = pytest.mark.serving


def test_tp2_worker_serves(ray_cluster):
    from ray import serve
    from ray.util import placement_group_table

    serve_run(
        ray_cluster, "--name", "tp2", "--route-prefix", "/tp2", "serve_app.app:build_app",
        "workers.num_workers=1", "engine.tensor_parallel_size=2", "engine.cpus_per_rank=0.5",
        "engine.kv_cache_gib=0.25", "ingress.num_cpus=0", "model.load_format=dummy", name="tp2",
    )
    try:
        resp = httpx.post(
            f"{ray_cluster.http}/tp2/v1/completions",
            json={"model": "tiny", "prompt": "tensor parallel", "max_tokens": 16, "ignore_eos": True},
            timeout=120,
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["completion_tokens"] == 16
        groups = [g for g in placement_group_table().values() if g["state"] == "CREATED"]
        assert any(
            g["strategy"] == "STRICT_PACK" and g["bundles"] == {0: {"CPU": 0.5}, 1: {"CPU": 0.5}} for g in groups
        )
        stats = serve.get_deployment_handle("LLMWorker", app_name="tp2").stats.remote().result()
        assert stats.kv_blocks_total > 0
    finally:
        serve.delete("tp2")
