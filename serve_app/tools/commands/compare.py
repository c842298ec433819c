"""`aladdin compare`: the fewest GPUs each placement policy needs for a target attainment."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from serve_app.tools.commands.simulate import add_aladdin_arguments, add_scenario_arguments, aladdin_options, build_scenario


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("--plot needs matplotlib, which is not installed in this environment") from None


def _plot_title(args: argparse.Namespace) -> str:
    return (f"{Path(args.trace).name} x{args.rate_scale:g}, {args.profile_family}, "
            f"TTFT <= {args.slo_ttft:g} s, ATGT <= {args.slo_atgt * 1000:g} ms")


def _compare(args: argparse.Namespace) -> int:
    from placement.evaluation.compare import compare
    from predictors.latency import load_profile_family

    if args.plot:
        _require_matplotlib()  # fail before the minutes of simulation, not after
    family = load_profile_family(args.profile_family)
    scaler_options = None
    if args.target_ongoing_requests:
        scaler_options = {"queue-length": {"target_ongoing_requests": args.target_ongoing_requests}}
    comparison = compare(
        build_scenario(args, family.tps[0]), family, target=args.target, max_gpus=args.max_gpus,
        autoscaled=not args.no_autoscaled, aladdin_options=aladdin_options(args), scaler_options=scaler_options,
    )
    out = comparison.to_dict()
    if args.plot:
        from placement.evaluation.compare_plot import write_plot

        write_plot(comparison, args.plot, title=_plot_title(args))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name, r in out["policies"].items():
            print(f"{name:>12}: tp {r['tp']}  min GPUs {r['min_gpus']}  attainment {r['attainment']}")
        for name, r in out["autoscaled"].items():
            print(f"{name:>12}: autoscaled ({r['scaler']}) tp {r['tp']}  GPU-hours {r['gpu_hours']:.2f}  "
                  f"attainment {r['attainment']}")
        print(f"ratios: {out['ratios']}")
        print(f"goals met: {out['goals']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="fewest GPUs per placement policy for a target SLO attainment")
    add_scenario_arguments(p)
    p.add_argument("--target", type=float, default=0.99, help="SLO attainment to reach")
    p.add_argument("--max-gpus", type=int, default=256, help="give up above this many GPUs")
    p.add_argument("--no-autoscaled", action="store_true",
                   help="skip the autoscaled runs (aladdin + planner vs p2c + queue-length)")
    add_aladdin_arguments(p)
    p.add_argument("--target-ongoing-requests", type=float,
                   help="queue-length rule's target per replica (default: "
                        "placement.simulator.autoscale.DEFAULT_TARGET_ONGOING_REQUESTS)")
    p.add_argument("--plot", help="write attainment vs GPUs per policy and GPUs over time to this PNG "
                   "(needs matplotlib)")
    p.set_defaults(func=_compare)
