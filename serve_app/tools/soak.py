"""`make soak`: a long open-loop run against a local deployment, counting how every request
ended and watching the memory of every process of the deployment.

Every request must end with a response (200) or an explicit error (an HTTP error status, or an
in-band `error` event when streaming); a request with neither (timed out, connection dropped)
is lost. Memory (RSS) of each Ray/engine process is sampled after the warm-up and at the end.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from serve_app.config import AppConfig

MAX_ERRORS_KEPT = 50


@dataclass(frozen=True)
class SoakOptions:
    requests: int = 20_000
    duration_s: float = 600.0
    warmup_s: float = 30.0
    sample_every_s: float = 60.0  # RSS sampled this often too, to tell a plateau from a leak
    workers: int = 2
    max_tokens: int = 8
    port: int = 8200
    seed: int = 0
    timeout_s: float = 120.0


@dataclass
class SoakResult:
    outcomes: Counter = field(default_factory=Counter)  # "ok", "http_429", "stream_error", "lost", ...
    memory_mb_after_warmup: dict[str, float] = field(default_factory=dict)
    memory_mb_at_end: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # the first MAX_ERRORS_KEPT error messages
    memory_mb_series: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # (s into the run, RSS)
    wall_s: float = 0.0

    @property
    def lost(self) -> int:
        return self.outcomes.get("lost", 0)

    def memory_growth(self) -> dict[str, float]:
        """End RSS / after-warm-up RSS - 1, per process alive at both samples."""
        return {name: self.memory_mb_at_end[name] / before - 1
                for name, before in self.memory_mb_after_warmup.items()
                if name in self.memory_mb_at_end and before > 0}

    def to_dict(self) -> dict[str, Any]:
        growth = self.memory_growth()
        return {**asdict(self), "outcomes": dict(self.outcomes), "lost": self.lost,
                "memory_growth": growth, "max_memory_growth": max(growth.values(), default=0.0)}


def deployment_processes(known: dict[str, psutil.Process] | None = None) -> dict[str, psutil.Process]:
    """This driver's Ray and engine processes (its whole process tree), named by pid and the
    title they had when first seen (Ray retitles a worker per task); `known` keeps its names."""
    out = dict(known or {})
    seen = {proc.pid for proc in out.values()}
    for proc in psutil.Process().children(recursive=True):
        if proc.pid in seen:
            continue
        try:
            title = " ".join(proc.cmdline()[:1]).split("/")[-1][:60]
        except psutil.Error:
            continue
        out[f"{proc.pid}:{title}"] = proc
    return out


def sample_memory(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, proc in procs.items():
        try:
            out[name] = proc.memory_info().rss / 2**20
        except psutil.Error:
            continue
    return out


def _body(i: int, rng: random.Random, max_tokens: int) -> tuple[str, dict[str, Any]]:
    stream = rng.random() < 0.5
    extra = {"stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})}
    if rng.random() < 0.5:
        return "/v1/completions", {"model": "tiny", "prompt": f"soak {i}: tell me about rivers", "max_tokens": max_tokens,
                                   "ignore_eos": True, **extra}
    return "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": f"soak {i}"}],
                                    "max_tokens": max_tokens, "ignore_eos": True, **extra}


def stream_error_message(event: str) -> str | None:
    """The message of an in-band error event, None for any other event."""
    try:
        payload = json.loads(event)
    except ValueError:
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    return str(error.get("message", error) if isinstance(error, dict) else error) if error else None


async def _one(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> tuple[str, str]:
    """How one request ended, and the error it reported (empty when none)."""
    try:
        async with http.stream("POST", path, json=body) as response:
            text = (await response.aread()).decode(errors="replace")
    except httpx.HTTPError as exc:  # timeouts included: no answer at all
        return "lost", repr(exc)
    if response.status_code != 200:
        return f"http_{response.status_code}", text[:300]
    if not body["stream"]:
        return "ok", ""
    events = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return "lost", "the stream ended without its terminator"
    errors = [e for e in map(stream_error_message, events[:-1]) if e]
    return ("stream_error", errors[0][:300]) if errors else ("ok", "")


def _count(ended: tuple[str, str], outcomes: Counter, errors: list[str]) -> None:
    outcome, error = ended
    outcomes[outcome] += 1
    if error and len(errors) < MAX_ERRORS_KEPT:
        errors.append(f"{outcome}: {error}")


async def _load(url: str, options: SoakOptions, on_warm: Any, on_sample: Any, errors: list[str]) -> Counter:
    rng = random.Random(options.seed)
    rate = options.requests / options.duration_s
    limits = httpx.Limits(max_connections=1000)
    outcomes: Counter = Counter()
    async with httpx.AsyncClient(base_url=url, timeout=options.timeout_s, limits=limits) as http:
        t0 = time.perf_counter()
        warm_fired = False
        next_sample = options.sample_every_s
        tasks = []
        t = 0.0
        for i in range(options.requests):
            t += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, t - (time.perf_counter() - t0)))
            if not warm_fired and time.perf_counter() - t0 >= options.warmup_s:
                on_warm()
                warm_fired = True
            if time.perf_counter() - t0 >= next_sample:
                on_sample(next_sample)
                next_sample += options.sample_every_s
            path, body = _body(i, rng, options.max_tokens)
            task = asyncio.create_task(_one(http, path, body))
            task.add_done_callback(lambda f: _count(f.result(), outcomes, errors))
            tasks.append(task)
            if i % 1000 == 0:
                print(f"  {i} sent at {time.perf_counter() - t0:.0f} s; so far {dict(outcomes)}", flush=True)
        await asyncio.gather(*tasks)
    return outcomes


def run_soak(options: SoakOptions, out_dir: str | Path) -> SoakResult:
    """Deploy this app locally (aladdin, `options.workers` tiny-model workers), soak it, shut down."""
    import ray
    from ray import serve

    from serve_app.app import build_app_from_config

    config = AppConfig.from_args({"workers.num_workers": options.workers, "placement.policy": "aladdin"})
    result = SoakResult()
    ray.init(address="local", num_cpus=16, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": options.port})
        serve.run(build_app_from_config(config), name="soak", route_prefix="/")
        procs = deployment_processes()

        def warm() -> None:
            procs.update(deployment_processes(procs))
            result.memory_mb_after_warmup = sample_memory(procs)

        def sample(elapsed_s: float) -> None:
            result.memory_mb_series.append((elapsed_s, sample_memory(procs)))

        start = time.perf_counter()
        result.outcomes = asyncio.run(_load(f"http://127.0.0.1:{options.port}", options, warm, sample, result.errors))
        result.wall_s = time.perf_counter() - start
        time.sleep(5)  # let replicas settle after the last response
        result.memory_mb_at_end = sample_memory(procs)
    finally:
        serve.shutdown()
        ray.shutdown()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps({"options": asdict(options), **result.to_dict()}, indent=1))
    return result
