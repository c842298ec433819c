"""`make demo`: a local Ray, two tiny-model vLLM workers, a short open-loop ShareGPT burst,
a latency summary, and a clean shutdown."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import psutil

from serve_app.config import AppConfig


@dataclass(frozen=True)
class DemoOptions:
    workers: int = 2
    requests: int = 48
    rate: float = 3.0
    seed: int = 0
    port: int = 8000


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _stop_process_tree(procs: list[psutil.Process], timeout_s: float = 30.0) -> tuple[int, int]:
    """Wait for `procs` (this demo's Ray, replica and engine processes) to exit after Ray's
    shutdown; kill the ones still alive after `timeout_s`. Returns (exited, killed)."""
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.5)
    survivors = [p for p in procs if _alive(p)]
    for proc in survivors:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in survivors) and time.monotonic() < deadline:
        time.sleep(0.2)
    return len(procs) - len(survivors), len(survivors)


def run_demo(options: DemoOptions) -> dict:
    """Deploy, send the burst, print and return the summary; always shuts Ray down."""
    import ray
    from ray import serve
    from transformers import AutoTokenizer

    from serve_app.app import build_app_from_config
    from serve_app.tools.loadgen import run_open_loop, sharegpt_workload, summarize
    from serve_app.model_source import resolve_tokenizer_dir

    config = AppConfig.from_args({
        "workers.num_workers": options.workers,
        "placement.policy": "aladdin",
        # the heartbeat's estimate drives the worker count between 1 and the workers started
        "scaling": {"enabled": True, "min_workers": 1, "max_workers": options.workers},
    })
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_tokenizer_dir(config.model)))
    workload = sharegpt_workload(tokenizer, options.requests, options.rate, seed=options.seed)

    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    tree: list[psutil.Process] = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": options.port})
        t0 = time.perf_counter()
        print(f"deploying {options.workers} vLLM workers on the tiny model ...", flush=True)
        serve.run(build_app_from_config(config), name="aladdin", route_prefix="/")
        print(f"ready in {time.perf_counter() - t0:.0f} s; sending {len(workload)} requests "
              f"(Poisson, {options.rate}/s, ShareGPT prompts)", flush=True)
        results, wall = asyncio.run(
            run_open_loop(f"http://127.0.0.1:{options.port}", config.model.name, workload)
        )
        summary = summarize(results, wall)
        summary["placement"] = _placement_report()
    finally:
        tree = psutil.Process().children(recursive=True)
        serve.shutdown()
        ray.shutdown()
    _print_summary(summary)
    _print_placement(summary["placement"])
    exited, killed = _stop_process_tree(tree)
    left = [p for p in tree if _alive(p)]
    print(f"shutdown: {exited} Ray/engine processes exited, {killed} killed after 30 s, {len(left)} left behind")
    summary.update(ray_processes_exited=exited, ray_processes_killed=killed, ray_processes_left=len(left))
    return summary


def _print_summary(s: dict) -> None:
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:8.1f}"

    print()
    print(f"requests  sent {s['requests']}  succeeded {s['succeeded']}  failed {s['failed']}  "
          f"in {s['wall_s']:.1f} s  ({s['output_tokens_per_s']} output tok/s)")
    print(f"TTFT ms   p50 {fmt(s['ttft_ms_p50'])}   p99 {fmt(s['ttft_ms_p99'])}")
    print(f"ATGT ms   p50 {fmt(s['atgt_ms_p50'])}   p99 {fmt(s['atgt_ms_p99'])}")
    if s["errors"]:
        print("errors:", json.dumps(s["errors"]))


def _placement_report() -> dict:
    """What the placement actor decided during the run (see PlacementActor.stats)."""
    import ray

    from serve_app.scheduler.placement_actor import find_placement_actor

    actor = find_placement_actor("aladdin")
    return ray.get(actor.stats.remote())


def _print_placement(p: dict) -> None:
    print()
    print(f"placement policy {p['policy']} (profile {p['profile']})")
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(p["outcomes"].items()))
    print(f"  decisions: {outcomes}")
    for worker, count in sorted(p["decisions"].items()):
        print(f"  worker {worker}: {count} requests placed")
    print("scaling (heartbeat estimate -> worker target):")
    for entry in p["scaling_log"]:
        note = "" if entry["window_full"] else "  (window not yet full: no scale-down)"
        print(f"  {entry['rate_per_s']:5.2f} req/s -> estimate {entry['estimate_workers']} worker(s), "
              f"target {entry['target_workers']}, held {entry['workers_held']}{note}")
