"""Node scaling end to end with Ray's real cluster autoscaler over fake nodes.

A `fake_multinode` cluster (tests/fake_cluster.py) has a CPU-only head and a `gpu_node` type
with logical `{CPU: 2, GPU: 1}`, from zero nodes. The app runs `sim` workers (tokens on the
Llama-2-7B A100 TP1 profile's schedule, no model; fake GPUs are logical) with `scaling.enabled`
and `node_scaling: on`, so the placement actor's minimal-worker estimate both sets the worker
replica count (Serve's autoscaler, through the workers' autoscaling stats) and is asked of the
cluster autoscaler as one `{CPU: 1, GPU: 1}` bundle per worker (`request_resources`).

The test shows the chain (`scaling.min_workers: 0`): the app starts with one worker, for which
the autoscaler adds a GPU node; load rises -> estimate rises -> GPU nodes are added -> replicas
run, every request succeeds; load stops -> estimate falls -> replicas go (to zero) -> the idle
GPU nodes are removed after the autoscaler's idle timeout (all of them); load returns -> a node
and a replica come back from zero and serve it. Throughout, the placement actor (which holds
the arrival window the estimate comes from) must never be restarted. The order of the links is
asserted from the sampled timeline; no timing is (this machine is small and shared); the
timeline is printed (`-s`).

The scenario runs in a child process (`python -m tests.test_cluster_autoscaler`): a process
holds one Ray connection, and the rest of the suite keeps its own local cluster connected. The
parent makes the cluster's temp dir, and after the child ends (or is killed) terminates any
process of that cluster still alive and checks that none is left. It never runs `ray stop`,
which would kill every Ray process on the machine.

Run alone: `.venv/bin/pytest -q tests/test_cluster_autoscaler.py -m autoscaler -s`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pytest

from tests.fake_cluster import FakeCluster, free_port, make_temp_dir, remove_temp_dir

REPO = Path(__file__).resolve().parents[1]
TEMP_DIR_ENV = "ALADDIN_FAKE_CLUSTER_DIR"
REPORT_ENV = "ALADDIN_FAKE_CLUSTER_REPORT"
CHILD_TIMEOUT_S = 1500

APP = "fakenodes"
GPU_NODE = "gpu_node"
MAX_GPU_NODES = 3
IDLE_TIMEOUT_MIN = 0.5
MIN_WORKERS = 0  # scale to zero: every GPU node goes when idle
MAX_WORKERS = 3

# 4,000-token prompts, 8 output tokens, TTFT SLO 0.5 s: on the llama-2-7b A100 TP1 profile one
# worker sustains ~2.0 req/s (TTFT-bound), so 5 req/s plans 3 workers with the 10% headroom
# (anything from ~3.7 to ~5.5 req/s does; more is capped at max_workers = 3).
PROMPT_TOKENS = 4000
MAX_TOKENS = 8
RATE_PER_S = 5.0
COLD_RATE_PER_S = 1.0  # after scale-to-zero: one worker suffices
COLD_SECONDS = 5

APP_ARGS: dict[str, Any] = {
    "engine": {
        "kind": "sim", "accelerator": "gpu", "tensor_parallel_size": 1, "cpus_per_rank": 1.0,
        "max_model_len": 4096, "kv_cache_gib": None,
    },
    "workers": {"num_workers": 1, "graceful_shutdown_timeout_s": 10},
    "ingress": {"num_cpus": 0.5},
    "slo": {"ttft_ms": 500, "atgt_ms": 50},
    "predictor": {"train_if_missing": False},
    # admission off: this test follows every request through scale-up (with admission on, part
    # of a burst beyond the current workers would get 429 while nodes start; tests/test_overload.py)
    "placement": {"policy": "aladdin", "profile_family": "llama-2-7b-a100", "admission": False},
    "scaling": {
        "enabled": True, "min_workers": MIN_WORKERS, "max_workers": MAX_WORKERS,
        "window_s": 20, "estimate_period_s": 2, "upscale_delay_s": 2, "downscale_delay_s": 10,
        "node_scaling": "on",
    },
}


# ---- the pytest side ----------------------------------------------------------------------

@pytest.mark.autoscaler
@pytest.mark.timeout(CHILD_TIMEOUT_S + 120)
def test_estimate_drives_fake_gpu_nodes_up_and_down(tmp_path):
    temp_dir = make_temp_dir()
    report_path = tmp_path / "report.json"
    env = {**os.environ, TEMP_DIR_ENV: str(temp_dir), REPORT_ENV: str(report_path), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    cluster = FakeCluster(temp_dir)
    try:
        try:
            child = subprocess.run(
                [sys.executable, "-m", "tests.test_cluster_autoscaler"], cwd=REPO, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=CHILD_TIMEOUT_S,
            )
            output, rc = child.stdout, child.returncode
        except subprocess.TimeoutExpired as exc:  # the child is killed; its cluster is not
            out = exc.stdout or ""
            output, rc = (out.decode(errors="replace") if isinstance(out, bytes) else out), "timeout"
        print(output)
    finally:
        leftovers = [p.pid for p in cluster.processes()]
        cluster.kill()  # raises if anything of it survives
        remove_temp_dir(cluster)
    assert rc == 0, f"scenario failed (rc={rc}):\n{output[-20000:]}"
    assert not leftovers, f"the scenario's own teardown left processes {leftovers}"
    report = json.loads(report_path.read_text())
    up, down, cold = report["up"], report["down"], report["cold"]
    # load rises -> estimate rises -> nodes are added -> replicas run
    assert up["peak_estimate"] >= 2 and up["peak_node_request"] >= 2, up
    assert up["peak_gpu_nodes"] >= 2 and up["peak_running"] >= 2, up
    chain = report["chain"]
    assert None not in chain["up"].values() and None not in chain["down"].values(), chain
    assert chain["up"]["estimate"] <= chain["up"]["nodes"] <= chain["up"]["replicas"], chain
    assert report["requests"]["ok"] == report["requests"]["sent"] > 0, report["requests"]
    # load stops -> estimate falls -> replicas go -> nodes are removed after the idle timeout
    assert down["estimate_workers"] == 0 and down["node_request"] == MIN_WORKERS, down
    assert down["running"] == MIN_WORKERS and down["gpu_nodes"] == MIN_WORKERS, down
    assert chain["down"]["estimate"] <= chain["down"]["replicas"] <= chain["down"]["nodes"], chain
    # from zero again: a node and a replica come back for the requests
    assert cold["ok"] == cold["sent"] > 0, cold
    # The placement actor holds the arrival window the estimate comes from: scaling down
    # (replicas and their placement groups go, idle GPU nodes go) must not take it along.
    assert report["placement_actor"]["restarts"] == 0, (
        f"the placement actor was restarted during the run: {report['placement_actor']}")
    assert report["teardown"]["left"] == [], report["teardown"]


# ---- the scenario (child process) ---------------------------------------------------------

class OpenLoop:
    """Poisson arrivals of one completion request at `rate` per second, from a thread with its
    own event loop, until `stop()`; every reply is recorded."""

    def __init__(self, url: str, rate: float, body: dict[str, Any], seed: int = 0) -> None:
        self.url, self.rate = url, rate
        self.content = json.dumps(body).encode()
        self.rng = random.Random(seed)
        self.results: list[tuple[float, int | str, int]] = []  # (sent at, status or error, tokens)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"requests still outstanding {timeout_s:.0f} s after the load stopped")

    @property
    def sent(self) -> int:
        return len(self.results)

    async def _main(self) -> None:
        import httpx

        limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:
            loop = asyncio.get_running_loop()
            tasks = []
            next_at = loop.time()
            while not self._stop.is_set():
                next_at += self.rng.expovariate(self.rate)
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                index = len(self.results)
                self.results.append((time.time(), "pending", 0))
                tasks.append(asyncio.create_task(self._one(client, index)))
            await asyncio.gather(*tasks)

    async def _one(self, client: Any, index: int) -> None:
        sent_at = self.results[index][0]
        try:
            reply = await client.post(self.url, content=self.content, headers={"content-type": "application/json"})
            tokens = reply.json().get("usage", {}).get("completion_tokens", 0) if reply.status_code == 200 else 0
            outcome: int | str = reply.status_code
            if reply.status_code != 200:
                outcome = f"{reply.status_code}: {reply.text[:200]}"
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on
            outcome, tokens = repr(exc), 0
        self.results[index] = (sent_at, outcome, tokens)


class Observer:
    """Samples the chain once per call: the placement actor's estimate and node request, alive
    GPU nodes, worker replicas by state; prints a line whenever something changed."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.samples: list[dict[str, Any]] = []
        self._last_key: tuple | None = None

    def sample(self) -> dict[str, Any]:
        import ray
        from ray import serve

        from serve_app.scheduler.placement_actor import find_placement_actor

        s: dict[str, Any] = {"t": round(time.monotonic() - self.t0, 1)}
        try:
            actor = find_placement_actor(APP)
            stats = ray.get(actor.stats.remote(), timeout=10)
            estimate = stats.get("estimate") or {}
            s["estimate"] = estimate.get("workers")
            s["rate"] = round(estimate.get("rate_per_s", 0.0), 2)
            s["node_request"] = stats.get("node_request")
        except Exception as exc:  # noqa: BLE001 - not created yet, or restarting
            s["estimate"] = s["node_request"] = None
            s["actor_error"] = type(exc).__name__
        alive = [n for n in ray.nodes() if n["Alive"]]
        s["gpu_nodes"] = sum(1 for n in alive if n["Resources"].get("GPU"))
        s.update(_placement_actor_info({n["NodeID"]: n for n in alive}))
        try:
            app = serve.status().applications.get(APP)
            states = dict(app.deployments["LLMWorker"].replica_states) if app else {}
        except Exception as exc:  # noqa: BLE001
            states = {"error": type(exc).__name__}
        s["running"] = states.get("RUNNING", 0)
        s["replicas"] = {getattr(k, "value", k): v for k, v in states.items()}
        self.samples.append(s)
        if s["actor_restarts"]:
            raise AssertionError(
                f"the placement actor was restarted ({s}): it holds the estimate's arrival window, so "
                "scaling must not kill it (is it inside a worker replica's placement group, or on a "
                "GPU node the autoscaler removed?)")
        key = (s["estimate"], s["node_request"], s["gpu_nodes"], s["running"], tuple(sorted(s["replicas"].items())),
               s["actor_restarts"], s["actor_on"], s.get("actor_state"))
        if key != self._last_key:
            print(f"[{s['t']:7.1f}s] estimate={s['estimate']} rate={s.get('rate')} node_request={s['node_request']}"
                  f" gpu_nodes={s['gpu_nodes']} replicas={s['replicas']} placement actor: on {s['actor_on']},"
                  f" {s.get('actor_state')}, restarts {s['actor_restarts']}", flush=True)
            self._last_key = key
        return s

    def wait(self, predicate, timeout_s: float, what: str, period_s: float = 1.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            s = self.sample()
            if predicate(s):
                print(f"[{s['t']:7.1f}s] -> {what}", flush=True)
                return s
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not seen within {timeout_s:.0f} s; last sample {s}")
            time.sleep(period_s)


def _chain(samples: list[dict[str, Any]], t_load: float, t_stop: float, t_cold: float) -> dict[str, Any]:
    """When each link was first seen, from the samples alone. Up (from one worker on one node):
    the first sample with an estimate of >= 2 workers, >= 2 GPU nodes, >= 2 running replicas.
    Down (from the peak of running replicas, R): the first with an estimate below R, fewer than
    R replicas running, fewer than R GPU nodes."""
    def first(t0: float, t1: float, pred) -> float | None:
        return next((s["t"] for s in samples if t0 <= s["t"] < t1 and pred(s)), None)

    peak = max(s["running"] for s in samples if t_load <= s["t"] < t_stop)
    return {
        "up": {
            "estimate": first(t_load, t_stop, lambda s: (s["estimate"] or 0) >= 2),
            "nodes": first(t_load, t_stop, lambda s: s["gpu_nodes"] >= 2),
            "replicas": first(t_load, t_stop, lambda s: s["running"] >= 2),
        },
        "peak_running": peak,
        "down": {
            "estimate": first(t_stop, t_cold, lambda s: s["estimate"] is not None and s["estimate"] < peak),
            "replicas": first(t_stop, t_cold, lambda s: s["running"] < peak),
            "nodes": first(t_stop, t_cold, lambda s: s["gpu_nodes"] < peak),
        },
    }


def _outcomes(load: OpenLoop) -> dict[str, Any]:
    bad = [r for r in load.results if r[1] != 200 or r[2] != MAX_TOKENS]
    return {"sent": load.sent, "ok": load.sent - len(bad), "bad": bad[:20]}


def _placement_actor_info(nodes: dict[str, dict]) -> dict[str, Any]:
    """Where the placement actor lives (head or a GPU node) and how often it was restarted."""
    import ray

    prefix = f"placement:{APP}:"  # serve_app.scheduler.placement_actor.placement_actor_name, any config digest
    mine = [a for a in ray._private.state.actors().values() if (a.get("Name") or "").startswith(prefix)]
    if not mine:
        return {"actor_restarts": None, "actor_on": None}
    actor = max(mine, key=lambda a: a.get("StartTime") or 0)
    node = nodes.get(actor["Address"]["NodeID"])
    on = None if node is None else ("head" if "node:__internal_head__" in node["Resources"] else "gpu_node")
    return {"actor_restarts": actor.get("NumRestarts"), "actor_on": on, "actor_state": actor.get("State")}


def _autoscaler_events(cluster: FakeCluster) -> list[str]:
    logs = cluster.logs_dir()
    path = logs / "monitor.log" if logs else None
    if path is None or not path.exists():
        return []
    return [line.split(":event_summary:", 1)[1] for line in path.read_text(errors="replace").splitlines()
            if ":event_summary:" in line and "Resized" not in line]


def run_scenario(temp_dir: Path, report_path: Path) -> None:
    import ray
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    from serve_app.app import build_app_from_config
    from serve_app.config import AppConfig
    from tests.fake_cluster import start_fake_cluster

    report: dict[str, Any] = {}
    t_start = time.monotonic()
    cluster = start_fake_cluster(
        {GPU_NODE: {"resources": {"CPU": 2, "GPU": 1}, "min_workers": 0, "max_workers": MAX_GPU_NODES}},
        head_resources={"CPU": 4}, idle_timeout_minutes=IDLE_TIMEOUT_MIN, max_workers=MAX_GPU_NODES,
        temp_dir=temp_dir,
    )
    print(f"fake cluster up at {cluster.address} in {time.monotonic() - t_start:.1f} s ({temp_dir})", flush=True)
    load: OpenLoop | None = None
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        http_port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": http_port})
        config = AppConfig.model_validate(APP_ARGS)
        assert config.scaling.min_workers == MIN_WORKERS
        serve.run_many([serve.RunTarget(build_app_from_config(config), name=APP, route_prefix=f"/{APP}")],
                       wait_for_applications_running=False)
        obs = Observer(time.monotonic())

        def app_running(_s: dict[str, Any]) -> bool:
            app = serve.status().applications.get(APP)
            if app is not None and app.status == ApplicationStatus.DEPLOY_FAILED:
                raise RuntimeError(f"{APP} failed to deploy: {app.message}")
            return app is not None and app.status == ApplicationStatus.RUNNING

        # min_workers = 1: the first worker's placement group already needs a GPU node
        # The worker deployment starts with one replica (initial_replicas); its placement group
        # ({CPU: 1, GPU: 1}) can only go on a GPU node, so the autoscaler adds the first one.
        obs.wait(app_running, 600, "app RUNNING (a GPU node added for the initial worker)")
        base = obs.sample()
        assert base["running"] == 1 and base["gpu_nodes"] == 1, base
        report["deployed_after_s"] = base["t"]
        url = f"http://127.0.0.1:{http_port}/{APP}/v1/completions"
        body = {"model": "tiny", "prompt": [100 + (k * 7) % 500 for k in range(PROMPT_TOKENS)],
                "max_tokens": MAX_TOKENS, "ignore_eos": True}

        # ---- load rises ---------------------------------------------------------------------
        load = OpenLoop(url, RATE_PER_S, body)
        load.start()
        t_load = obs.sample()["t"]
        print(f"[{t_load:7.1f}s] load started: {RATE_PER_S} req/s of {PROMPT_TOKENS}-token prompts", flush=True)
        s_est = obs.wait(lambda s: (s["estimate"] or 0) >= 2 and (s["node_request"] or 0) >= 2, 300,
                         "estimate >= 2 workers, asked of the cluster autoscaler")
        s_nodes = obs.wait(lambda s: s["gpu_nodes"] >= 2, 420, "GPU nodes added (>= 2)")
        s_reps = obs.wait(lambda s: s["running"] >= 2 and s["running"] == s["node_request"]
                          and s["gpu_nodes"] >= s["running"], 480,
                          "worker replicas RUNNING on them, as many as requested")
        time.sleep(20)  # a little longer at full size
        peak = obs.sample()
        report["up"] = {
            "t_load": t_load, "t_estimate": s_est["t"], "t_nodes": s_nodes["t"], "t_replicas": s_reps["t"],
            "peak_estimate": max(s["estimate"] or 0 for s in obs.samples),
            "peak_node_request": max(s["node_request"] or 0 for s in obs.samples),
            "peak_gpu_nodes": max(s["gpu_nodes"] for s in obs.samples),
            "peak_running": max(s["running"] for s in obs.samples),
            "at_peak": peak,
        }

        # ---- load stops ---------------------------------------------------------------------
        load.stop(timeout_s=600)
        t_stop = obs.sample()["t"]
        report["requests"] = _outcomes(load)
        print(f"[{t_stop:7.1f}s] load stopped: {report['requests']}", flush=True)
        assert report["requests"]["sent"] and not report["requests"]["bad"], report["requests"]
        load = None

        s_fall = obs.wait(lambda s: s["estimate"] == 0 and s["node_request"] == MIN_WORKERS, 300,
                          "estimate fell to 0 (window emptied); node request withdrawn")
        s_gone = obs.wait(lambda s: sum(s["replicas"].values()) == MIN_WORKERS, 300, "worker replicas gone")
        s_idle = obs.wait(lambda s: s["gpu_nodes"] == MIN_WORKERS, 300 + 60 * IDLE_TIMEOUT_MIN,
                          "idle GPU nodes removed")
        time.sleep(5)
        final = obs.sample()
        assert final["gpu_nodes"] == MIN_WORKERS and final["running"] == MIN_WORKERS, final
        report["down"] = {
            "t_stop": t_stop, "t_estimate_fell": s_fall["t"], "t_replicas_gone": s_gone["t"],
            "t_nodes_removed": s_idle["t"], "estimate_workers": final["estimate"],
            "node_request": final["node_request"], "running": final["running"], "gpu_nodes": final["gpu_nodes"],
        }

        # ---- load returns to a cluster with no worker and no GPU node -----------------------
        load = OpenLoop(url, COLD_RATE_PER_S, body, seed=1)
        load.start()
        t_cold = obs.sample()["t"]
        print(f"[{t_cold:7.1f}s] load again: {COLD_RATE_PER_S} req/s (cold start from zero)", flush=True)
        s_cold = obs.wait(lambda s: s["running"] >= 1 and s["gpu_nodes"] >= 1, 420,
                          "cold start: a GPU node added, a worker replica RUNNING")
        wait_for_replies = time.monotonic() + 300
        while not any(r[1] == 200 for r in load.results) and time.monotonic() < wait_for_replies:
            obs.sample()
            time.sleep(1)
        time.sleep(COLD_SECONDS)
        load.stop(timeout_s=600)
        report["cold"] = {"t_load": t_cold, "t_replica": s_cold["t"], **_outcomes(load)}
        load = None
        print(f"[{obs.sample()['t']:7.1f}s] load stopped: {report['cold']}", flush=True)
        assert report["cold"]["sent"] and not report["cold"]["bad"], report["cold"]
        report["chain"] = _chain(obs.samples, t_load, t_stop, t_cold)
        report["placement_actor"] = {
            "restarts": max((s["actor_restarts"] or 0) for s in obs.samples),
            "nodes": sorted({s["actor_on"] for s in obs.samples if s["actor_on"]}),
        }
        report["samples"] = obs.samples
    finally:
        report["autoscaler_events"] = _autoscaler_events(cluster)
        print("autoscaler events:\n  " + "\n  ".join(report["autoscaler_events"]), flush=True)
        report["teardown"] = teardown(cluster, load)
        report["total_s"] = round(time.monotonic() - t_start, 1)
        print(f"total {report['total_s']} s; teardown {report['teardown']}", flush=True)
        report_path.write_text(json.dumps(report, indent=1, default=str))


def teardown(cluster: FakeCluster, load: OpenLoop | None) -> dict[str, Any]:
    """Serve down, driver disconnected, then only this cluster's processes terminated."""
    import ray
    from ray import serve

    out: dict[str, Any] = {}
    t0 = time.monotonic()
    if load is not None:
        try:
            load.stop(timeout_s=30)
        except Exception as exc:  # noqa: BLE001
            out["load"] = repr(exc)
    if ray.is_initialized():
        try:
            serve.shutdown()
        except Exception as exc:  # noqa: BLE001
            out["serve"] = repr(exc)
        ray.shutdown()
    cluster.kill()
    out["left"] = [p.pid for p in cluster.processes()]
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


def main() -> int:
    temp_dir = Path(os.environ[TEMP_DIR_ENV])
    report_path = Path(os.environ[REPORT_ENV])
    try:
        run_scenario(temp_dir, report_path)
    except BaseException:
        traceback.print_exc()
        cluster = FakeCluster(temp_dir)
        print(cluster.monitor_log_tail(80))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
