"""`aladdin bench-ingress`: the serving path's cost per request in front of the engines.

This app is deployed locally with one ingress replica in front of W `sim` workers (no vLLM:
the engines cost next to nothing), and C closed-loop clients send short requests through
Serve's HTTP proxy (`max_tokens` tokens, `ignore_eos`) for a measured window after a warm-up.
It reports requests/s, client latency p50/p99, and the CPU seconds per request of the ingress
replica, the proxy and the whole local deployment: on a host whose cores the clients, the
proxy and the workers share, CPU per request is the figure a change to the ingress path moves
(requests/s follows whatever else runs). The SLOs are set so that admission sheds nothing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import psutil

from serve_app.config import AppConfig
from serve_app.tools.bench_actor import percentile_ms
from serve_app.tools.soak import deployment_processes

APP_NAME = "bench-ingress"
LENIENT_SLO_MS = 3_600_000  # an hour: admission judges every request servable


@dataclass(frozen=True)
class BenchIngressOptions:
    """What `aladdin bench-ingress` runs."""

    workers: int = 4
    concurrency: int = 16
    duration_s: float = 20.0
    warmup_s: float = 5.0
    max_tokens: int = 4
    stream: bool = False
    chat: bool = False
    policy: str = "aladdin"
    port: int = 8300

    def __post_init__(self) -> None:
        if self.workers < 1 or self.concurrency < 1 or self.max_tokens < 1:
            raise ValueError("workers, concurrency and max_tokens must be >= 1")
        if self.duration_s <= 0 or self.warmup_s < 0:
            raise ValueError("duration must be > 0 and warmup >= 0")

    def config(self) -> AppConfig:
        return AppConfig.from_args({
            "engine.kind": "sim", "engine.cpus_per_rank": 0.25, "workers.num_workers": self.workers,
            "placement.policy": self.policy, "slo.ttft_ms": LENIENT_SLO_MS, "slo.atgt_ms": LENIENT_SLO_MS,
        })

    def request(self, i: int) -> tuple[str, dict[str, Any]]:
        """The path and body of request `i`."""
        common = {"model": "tiny", "max_tokens": self.max_tokens, "ignore_eos": True, "stream": self.stream}
        if self.chat:
            return "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": f"request {i}: hello"}]}
        return "/v1/completions", {**common, "prompt": f"request {i}: tell me about rivers"}


@dataclass
class BenchIngressResult:
    """What one run measured inside its window."""

    options: BenchIngressOptions
    requests: int = 0
    failed: int = 0
    window_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list, repr=False)
    cpu_s: dict[str, float] = field(default_factory=dict)  # by `_groups` name

    def to_dict(self) -> dict[str, Any]:
        n = max(self.requests, 1)
        return {
            "options": asdict(self.options),
            "requests": self.requests,
            "failed": self.failed,
            "requests_per_s": self.requests / self.window_s if self.window_s else 0.0,
            "p50_ms": percentile_ms(self.latencies_s, 50),
            "p99_ms": percentile_ms(self.latencies_s, 99),
            "cpu_ms_per_request": {name: 1e3 * s / n for name, s in self.cpu_s.items()},
        }

    def summary(self) -> str:
        d = self.to_dict()
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in d["cpu_ms_per_request"].items())
        return (f"{d['requests_per_s']:.1f} requests/s ({self.requests} in {self.window_s:.0f} s, {self.failed} failed), "
                f"p50 {d['p50_ms'] or 0:.1f} ms, p99 {d['p99_ms'] or 0:.1f} ms; CPU ms per request: {cpu}")


def _cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _groups(procs: dict[str, psutil.Process]) -> dict[str, list[psutil.Process]]:
    """The processes to meter: the ingress replica, Serve's proxy, the workers (the app's other
    replicas), the placement actor and all of this deployment (Ray's own processes too)."""
    def named(*parts: str, unless: str | None = None) -> list[psutil.Process]:
        return [p for name, p in procs.items() if all(part in name for part in parts)
                and (unless is None or unless not in name)]

    return {
        "ingress": named(f"ServeReplica:{APP_NAME}:OpenAIIngress"),
        "proxy": named("ProxyActor"),
        "workers": named(f"ServeReplica:{APP_NAME}:", unless="OpenAIIngress"),
        "placement": named("PlacementActor"),
        "deployment": list(procs.values()),
    }


async def _client(http: httpx.AsyncClient, options: BenchIngressOptions, index: int, stop_at: float,
                  window: tuple[float, float], result: BenchIngressResult) -> None:
    i = index
    while time.perf_counter() < stop_at:
        path, body = options.request(i)
        i += options.concurrency
        start = time.perf_counter()
        try:
            response = await http.post(path, json=body)
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        end = time.perf_counter()
        if window[0] <= start and end <= window[1]:
            result.requests += ok
            result.failed += not ok
            if ok:
                result.latencies_s.append(end - start)


async def _load(options: BenchIngressOptions, base_url: str, result: BenchIngressResult) -> None:
    limits = httpx.Limits(max_connections=options.concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=60.0, limits=limits) as http:
        now = time.perf_counter()
        window = (now + options.warmup_s, now + options.warmup_s + options.duration_s)
        clients = [asyncio.create_task(_client(http, options, i, window[1], window, result))
                   for i in range(options.concurrency)]
        await asyncio.sleep(window[0] - time.perf_counter())
        # listed now: the placement actor starts with the workers' first heartbeats
        groups = _groups(deployment_processes())
        if not groups["ingress"]:
            raise RuntimeError("the ingress replica's process was not found among this driver's processes")
        before = {name: _cpu_s(procs) for name, procs in groups.items()}
        await asyncio.sleep(window[1] - time.perf_counter())
        result.cpu_s = {name: _cpu_s(procs) - before[name] for name, procs in groups.items()}
        result.window_s = options.duration_s
        await asyncio.gather(*clients)


def run_bench_ingress(options: BenchIngressOptions, serve_url: str | None = None) -> BenchIngressResult:
    """Deploy, load, and take the app down again (see the module docstring): in a local Ray and
    Serve started for it (Serve's proxy on `options.port`), or, given `serve_url`, in the Serve
    instance this driver started whose proxy answers there (the app under /bench-ingress)."""
    import ray
    from ray import serve

    from serve_app.app import build_app_from_config

    result = BenchIngressResult(options)
    own = serve_url is None
    if own:
        ray.init(address="local", num_cpus=max(8, options.workers), include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": options.port})
    prefix = "/" if own else f"/{APP_NAME}"
    base_url = f"http://127.0.0.1:{options.port}" if own else serve_url.rstrip("/") + prefix
    try:
        serve.run(build_app_from_config(options.config()), name=APP_NAME, route_prefix=prefix)
        asyncio.run(_load(options, base_url, result))
    finally:
        if own:
            serve.shutdown()
            ray.shutdown()
        else:
            serve.delete(APP_NAME)
    return result
