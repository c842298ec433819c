"""`aladdin bench-suite`: this app (aladdin, p2c, jsq, rr) against Ray Serve LLM (default and
prefix-aware routers) on the same trace slice, engines and SLOs; what `make bench` runs."""

from __future__ import annotations

import argparse


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def _names(text: str) -> tuple[str, ...]:
    return tuple(x for x in text.split(",") if x)


def _run(args: argparse.Namespace) -> int:
    from serve_app.tools.bench_suite import SuiteOptions, run_suite
    from serve_app.tools.bench_systems import SYSTEMS, SystemSpec

    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"aladdin bench-suite: unknown systems {sorted(unknown)}; known: {', '.join(SYSTEMS)}")
    options = SuiteOptions(
        trace=args.trace, rate_scales=args.rate_scales, duration_s=args.duration, systems=args.systems,
        repeat=args.repeat, reps=args.reps, calibrate=args.calibrate, start_s=args.start, port=args.port, seed=args.seed,
        prefix_groups=args.prefix_groups,
        spec=SystemSpec(workers=args.workers, slo_ttft_ms=args.slo_ttft_ms, slo_atgt_ms=args.slo_atgt_ms,
                        profile_path=args.profile, stream_interval=args.stream_interval,
                        atgt_margin=args.atgt_margin, max_model_len=args.max_model_len,
                        kv_cache_gib=args.kv_cache_gib),
    )
    rows = run_suite(options, args.out)
    return 0 if rows else 1


def register(sub: argparse._SubParsersAction) -> None:
    from serve_app.tools.bench_suite import GOAL_SYSTEMS
    from serve_app.tools.bench_systems import SYSTEMS

    p = sub.add_parser("bench-suite", help="compare this app's policies with Ray Serve LLM on one trace slice")
    p.add_argument("--trace", help="Azure CSV or Mooncake JSONL (default: synthetic Poisson)")
    p.add_argument("--rate-scales", type=_floats, default=(0.5, 1.0, 2.0), help="comma-separated, e.g. 0.5,1,2")
    p.add_argument("--duration", type=float, default=40.0, help="seconds of (scaled) trace per run")
    p.add_argument("--start", type=float, default=0.0, help="offset into the unscaled trace, s")
    p.add_argument("--systems", type=_names, default=SYSTEMS, help=f"comma-separated subset of {','.join(SYSTEMS)}")
    p.add_argument("--repeat", type=_names, default=GOAL_SYSTEMS, help="systems run --reps times")
    p.add_argument("--prefix-groups", type=float,
                   help="Mooncake: replay this share of the prefix groups (conversations) whole, so a rate scale "
                        "above 1 keeps their prefix reuse in the window")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="vLLM engines per system")
    p.add_argument("--slo-ttft-ms", type=float, default=1000.0)
    p.add_argument("--slo-atgt-ms", type=float, default=50.0)
    p.add_argument("--calibrate", help="this app's system (run first) whose runs fit a served placement profile "
                                       "for the app's later systems")
    p.add_argument("--profile", help="placement profile JSON for this app (default: the tiny-cpu family)")
    p.add_argument("--stream-interval", type=int, default=8, help="vLLM stream_interval for every system's engines")
    p.add_argument("--max-model-len", type=int, default=2048,
                   help="every system's engines; prompts longer than it are cut (keep long prefixes with more)")
    p.add_argument("--kv-cache-gib", type=float, default=0.5, help="KV cache per engine, every system's")
    p.add_argument("--atgt-margin", type=float, help="aladdin: a fixed packing margin, an expert override of the adaptive budget (placement.atgt_margin)")
    p.add_argument("--port", type=int, default=8100, help="HTTP port of the benchmark's Serve proxy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-results", help="output folder")
    p.set_defaults(func=_run)
