"""`make bench`: the same trace slice against every system of serve_app.tools.bench_systems, at
several loads, on one local Ray cluster, one system deployed at a time.

Per system: deploy, warm up (a few requests, not scored), replay the slice at each rate scale
(`reps` times for the systems named in `repeat`), delete. Every run lands in
OUT/<system>/x<rate>/rep<n>/ (results.json, requests.csv, latency.png); the table of all runs
in OUT/suite.json and OUT/comparison.png.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from serve_app.tools.bench import (
    TraceSlice, load_slice, run_bench, served_requests, slice_dict, write_run,
)
from serve_app.tools.bench_report import OURS, PREFIX_REFERENCE, REFERENCE
from serve_app.tools.bench_systems import APP_POLICIES, SYSTEMS, SystemSpec, app_config, build_system
from serve_app.tools.loadgen import WorkItem

#: the systems the report's goals compare: repeated `reps` times by default
GOAL_SYSTEMS = (OURS, REFERENCE, PREFIX_REFERENCE)

APP_NAME = "bench"


@dataclass(frozen=True)
class SuiteOptions:
    trace: str | None
    rate_scales: tuple[float, ...]
    duration_s: float
    systems: tuple[str, ...] = SYSTEMS
    repeat: tuple[str, ...] = GOAL_SYSTEMS
    reps: int = 3
    spec: SystemSpec = field(default_factory=SystemSpec)
    start_s: float = 0.0  # offset into the unscaled trace: every rate replays the same requests first
    port: int = 8100
    seed: int = 0
    warmup_requests: int = 6
    prefix_groups: float | None = None  # TraceSlice.prefix_groups
    # this app's system whose runs calibrate a served profile for the app's later systems
    # (placement then predicts what clients measure; see predictors.latency.served_fit)
    calibrate: str | None = None


def _warm_up(url: str, model: str, workload: list[WorkItem], n: int, spec: SystemSpec) -> None:
    """A few short requests so first-call costs (compilation, connections) are not scored. Each
    prompt starts with its own marker, in place of as many leading characters (its length stays
    within the context): a copy of a measured prompt would leave its prefix in a cache and hand
    that request a hit no trace gave it."""
    warm = []
    for i, w in enumerate(workload[:n]):
        marker = f"warm-up {i}: "
        warm.append(WorkItem(marker + w.prompt[len(marker):], min(w.max_tokens, 16), i * 0.2, w.input_len))
    run_bench(url, warm, model=model, slo_ttft_ms=spec.slo_ttft_ms, slo_atgt_ms=spec.slo_atgt_ms, progress=False)


def _calibrate(run_dirs: list[Path], out: Path, spec: SystemSpec) -> SystemSpec:
    """`spec` with a served profile fitted on `run_dirs`, the offline start of placement's
    latency model (the placement actor corrects it online). A fit the runs cannot support
    leaves `spec` on its engine profile, with a warning, rather than stopping the suite."""
    from predictors.latency.families import load_profile_family
    from predictors.latency.served_fit import fit_served_profile

    try:
        profile = fit_served_profile(served_requests(run_dirs), load_profile_family("tiny-cpu").profile(1),
                                     source=f"served fit on {len(run_dirs)} bench runs")
    except ValueError as exc:
        print(f"served-profile fit skipped ({exc}); later systems keep the engine profile", flush=True)
        return spec
    path = profile.save(out / "served-profile.json")
    print(f"served profile {path}: decode {profile.decode.d0_s * 1e3:.2f} ms + {profile.decode.d1_s_per_seq * 1e3:.3f}"
          f" ms/seq (held-out MAPE {profile.fit.decode_mape_pct:.0f}%), serving overhead "
          f"{profile.serving_overhead_s * 1e3:.1f} ms + {profile.serving_overhead_per_request_s * 1e3:.2f} ms per request "
          f"in flight (TTFT MAPE {profile.fit.prefill_mape_pct:.0f}%)", flush=True)
    return replace(spec, profile_path=str(path))


def _outcomes_since(before: dict[str, int], after: dict[str, int] | None) -> dict[str, int] | None:
    """The placement actor's outcome counts of one run (its counters run across the suite)."""
    if after is None:
        return None
    return {outcome: n - before.get(outcome, 0) for outcome, n in after.items() if n > before.get(outcome, 0)}


def _placement_stats(system: str, spec: SystemSpec, quiet: bool = False) -> dict[str, Any] | None:
    """What the app's placement actor has learned so far (its workers' latency corrections,
    under every policy; aladdin's closed loop), kept with each run so `aladdin fidelity` can
    replay it with the workers as they measured. None for a system that is not this app. The
    actor is looked up by this system's config: the previous system's actor may still be
    alive (it exits once idle)."""
    if system not in APP_POLICIES:
        return None
    import ray

    from serve_app.scheduler.placement_actor import NAMESPACE, placement_actor_name

    name = placement_actor_name(APP_NAME, app_config(system, spec).model_dump(mode="json"))
    try:
        return ray.get(ray.get_actor(name, namespace=NAMESPACE).stats.remote(), timeout=10)
    except Exception as exc:  # the figures are extra: a run without them still counts
        if not quiet:
            print(f"[{system}] placement actor's stats not recorded ({exc!r})", flush=True)
        return None


class ClosedLoopSeries:
    """Samples the placement actor's latency corrections and closed loop every `period_s` while
    a run goes (a thread), so a run records how they moved, not only where they ended: how fast
    the model converged, and (aladdin) its packing budget when it refused."""

    def __init__(self, system: str, spec: SystemSpec, period_s: float = 2.0) -> None:
        self._system, self._spec, self._period_s = system, spec, period_s
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="closed-loop-series", daemon=True)

    def __enter__(self) -> ClosedLoopSeries:
        if self._system in APP_POLICIES:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.wait(self._period_s):
            stats = _placement_stats(self._system, self._spec, quiet=True)
            if stats is not None:
                loop = stats["closed_loop"] or {}
                self.samples.append({"t_s": round(time.perf_counter() - t0, 2),
                                     "ttft_share": loop.get("ttft_share"), "atgt_share": loop.get("atgt_share"),
                                     "corrections": stats["latency_corrections"]})


def _num(value: float | None, spec: str) -> str:
    """A summary figure as printed; "-" where the run has none (no request served, e.g.)."""
    return "-" if value is None else format(value, spec)


def run_suite(options: SuiteOptions, out_dir: str | Path) -> list[dict[str, Any]]:
    """Run every system at every rate; return one summary row per run (also in suite.json)."""
    import ray
    from ray import serve
    from transformers import AutoTokenizer

    from serve_app.config import ModelConfig
    from serve_app.model_source import resolve_tokenizer_dir
    from serve_app.tools.trace_prompts import trace_workload

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_tokenizer_dir(ModelConfig())))
    model = ModelConfig().name
    workloads: dict[float, tuple[TraceSlice, list[WorkItem]]] = {}
    for k in options.rate_scales:
        trace_slice = TraceSlice(trace=options.trace, rate_scale=k, start_s=options.start_s / k,
                                 duration_s=options.duration_s, max_model_len=options.spec.max_model_len,
                                 prefix_groups=options.prefix_groups,
                                 seed=options.seed)
        trace, _ = load_slice(trace_slice)
        workloads[k] = (trace_slice, trace_workload(trace, tokenizer, seed=options.seed))
    if options.calibrate and (options.calibrate not in APP_POLICIES or options.systems[0] != options.calibrate):
        raise ValueError("the calibrating system must be one of this app's policies and run first")
    url = f"http://127.0.0.1:{options.port}"
    rows: list[dict[str, Any]] = []
    spec = options.spec
    ray.init(address="local", num_cpus=16, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": options.port})
        for system in options.systems:
            t0 = time.perf_counter()
            print(f"[{system}] deploying {spec.workers} engines ...", flush=True)
            serve.run(build_system(system, spec), name=APP_NAME, route_prefix="/")
            _warm_up(url, model, workloads[options.rate_scales[0]][1], options.warmup_requests, spec)
            print(f"[{system}] ready in {time.perf_counter() - t0:.0f} s", flush=True)
            reps = options.reps if system in options.repeat else 1
            run_dirs = []
            for k in options.rate_scales:
                trace_slice, workload = workloads[k]
                for rep in range(reps):
                    before = (_placement_stats(system, spec, quiet=True) or {}).get("outcomes") or {}
                    with ClosedLoopSeries(system, spec) as series:
                        run = run_bench(url, workload, model=model, slo_ttft_ms=spec.slo_ttft_ms,
                                        slo_atgt_ms=spec.slo_atgt_ms, label=f"{system} x{k:g} rep{rep}")
                    stats = _placement_stats(system, spec) or {}
                    run.summary.update(system=system, rate_scale=k, rep=rep, slice=slice_dict(trace_slice),
                                       placement_profile=spec.profile_path if system in APP_POLICIES else None,
                                       placement_atgt_margin=spec.atgt_margin if system in APP_POLICIES else None,
                                       placement_closed_loop=stats.get("closed_loop"),
                                       placement_outcomes=_outcomes_since(before, stats.get("outcomes")),
                                       placement_latency_corrections=stats.get("latency_corrections"),
                                       placement_path_delay_s=(stats.get("path_delay") or {}).get("p50_s"),
                                       placement_closed_loop_series=series.samples or None)
                    run_dirs.append(out / system / f"x{k:g}" / f"rep{rep}")
                    write_run(run, run_dirs[-1])
                    rows.append(run.summary)
                    s = run.summary
                    print(f"[{system}] x{k:g} rep{rep}: {_num(s['offered_rate_per_s'], '.2f')} req/s offered, "
                          f"attainment {_num(s['attainment'], '.3f')}, goodput {_num(s['goodput_per_s'], '.2f')}/s, "
                          f"TTFT p50/p99 {_num(s['ttft_ms_p50'], '.0f')}/{_num(s['ttft_ms_p99'], '.0f')} ms, "
                          f"ATGT p50/p99 {_num(s['atgt_ms_p50'], '.1f')}/{_num(s['atgt_ms_p99'], '.1f')} ms, "
                          f"{s['failed']} failed", flush=True)
                    (out / "suite.json").write_text(json.dumps(
                        {"options": asdict(options), "runs": rows}, indent=1, default=str))
            serve.delete(APP_NAME)
            if system == options.calibrate:
                spec = _calibrate(run_dirs, out, spec)
    finally:
        serve.shutdown()
        ray.shutdown()
    from serve_app.tools.bench_plot import plot_comparison

    plot_comparison(rows, out / "comparison.png")
    return rows
