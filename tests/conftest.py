"""Shared fixtures. Serving tests use one real local Ray cluster and real vLLM CPU engines."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HTTP_PORT = 8000  # the port examples/serve_local_cpu.yaml asks for


@dataclass(frozen=True)
class Cluster:
    address: str
    http: str


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Cluster]:
    import ray
    from ray import serve

    # metrics reach the Prometheus endpoint within ~1 s instead of 10 (tests read them)
    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
    # address="local": never join a cluster started with `ray start` on this machine
    ray.init(address="local", num_cpus=8, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": HTTP_PORT})
    try:
        yield Cluster(address=ray.get_runtime_context().gcs_address, http=f"http://127.0.0.1:{HTTP_PORT}")
    finally:
        serve.shutdown()
        ray.shutdown()


def serve_run(cluster: Cluster, *args: str, name: str, timeout_s: float = 420) -> None:
    """Deploy with the real `serve run` CLI into the test cluster and wait until RUNNING."""
    serve_bin = str(Path(sys.executable).with_name("serve"))
    subprocess.run(
        [serve_bin, "run", "--non-blocking", "--address", cluster.address, *args],
        cwd=REPO,
        check=True,
        timeout=timeout_s,
        env={**os.environ, "RAY_ADDRESS": cluster.address},
    )
    wait_running(name, timeout_s)


def wait_running(name: str, timeout_s: float) -> None:
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get(name)
        if app is not None and app.status == ApplicationStatus.RUNNING:
            return
        if app is not None and app.status == ApplicationStatus.DEPLOY_FAILED:
            raise RuntimeError(f"app {name} failed to deploy: {app.message}")
        time.sleep(1)
    raise TimeoutError(f"app {name} not RUNNING after {timeout_s} s")


async def complete_many(base_url: str, n: int, max_tokens: int = 12, spacing_s: float = 0.0,
                        headers: dict[str, str] | None = None) -> list:
    """`n` completions of `max_tokens` forced tokens, sent `spacing_s` apart; their responses."""
    import httpx

    async with httpx.AsyncClient(timeout=120) as http:
        async def one(i: int) -> httpx.Response:
            await asyncio.sleep(i * spacing_s)
            body = {"model": "tiny", "prompt": f"placement {i}", "max_tokens": max_tokens, "ignore_eos": True}
            return await http.post(f"{base_url}/v1/completions", json=body, headers=headers)

        return await asyncio.gather(*(one(i) for i in range(n)))
