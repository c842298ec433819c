"""Optional Bearer API keys on the ingress: 401 in OpenAI's shape on a missing or wrong key,
checked before the body is parsed; /health stays open. Workers use the `sim` engine (the key
check is the ingress's; no model needed)."""

from __future__ import annotations

import httpx
import pytest
from openai import AuthenticationError, OpenAI

from tests.conftest import serve_run

pytestmark = pytest.mark.serving
APP = "keyed"
KEY = "sk-test-1"


@pytest.fixture(scope="module")
def keyed(ray_cluster):
    from ray import serve

    serve_run(
        ray_cluster, "serve_app.app:build_app", "engine.kind=sim", "engine.cpus_per_rank=0.25",
        "workers.num_workers=1", "ingress.num_cpus=0.25", f"ingress.api_keys={KEY},sk-test-2",
        "--name", APP, "--route-prefix", f"/{APP}", name=APP,
    )
    yield f"{ray_cluster.http}/{APP}"
    serve.delete(APP)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": f"Basic {KEY}"}])
def test_missing_or_wrong_key_is_401(keyed, headers):
    for method, path, body in [("GET", "/v1/models", None),
                               ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2}),
                               ("POST", "/v1/chat/completions", {"not": "even valid"})]:
        response = httpx.request(method, f"{keyed}{path}", json=body, headers=headers, timeout=30)
        assert response.status_code == 401, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error"
        assert response.headers["www-authenticate"] == "Bearer"


def test_right_key_serves_and_health_stays_open(keyed):
    assert httpx.get(f"{keyed}/health", timeout=30).status_code in (200, 503)
    for key in (KEY, "sk-test-2"):
        client = OpenAI(base_url=f"{keyed}/v1", api_key=key, max_retries=0)
        out = client.completions.create(model="tiny", prompt="hello", max_tokens=3, extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == 3
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{keyed}/v1", api_key="nope", max_retries=0).models.list()
