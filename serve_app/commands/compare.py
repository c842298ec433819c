"""`aladdin compare`: the fewest GPUs each placement policy needs for a target attainment."""

from __future__ import annotations

import argparse
import json

from serve_app.commands.simulate import add_scenario_arguments, build_scenario


def _require_matplotlib() -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib, which is not installed in this environment") from None
    matplotlib.use("Agg")


def _write_plot(comparison, path: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, result in comparison.policies.items():
        gpus, attainment = zip(*result.curve)
        ax.plot(gpus, attainment, marker="o", label=f"{name} (tp{result.tp})")
    ax.axhline(comparison.target, color="grey", linestyle=":")
    ax.set_xlabel("GPUs")
    ax.set_ylabel("SLO attainment")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def _compare(args: argparse.Namespace) -> int:
    from placement.compare import compare
    from predictors.latency import load_profile_family

    if args.plot:
        _require_matplotlib()  # fail before the minutes of simulation, not after
    family = load_profile_family(args.profile_family)
    comparison = compare(build_scenario(args, family.tps[0]), family, target=args.target, max_gpus=args.max_gpus)
    out = comparison.to_dict()
    if args.plot:
        _write_plot(comparison, args.plot)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name, r in out["policies"].items():
            print(f"{name:>12}: tp {r['tp']}  min GPUs {r['min_gpus']}  attainment {r['attainment']}")
        print(f"ratios: {out['ratios']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="fewest GPUs per placement policy for a target SLO attainment")
    add_scenario_arguments(p)
    p.add_argument("--target", type=float, default=0.99, help="SLO attainment to reach")
    p.add_argument("--max-gpus", type=int, default=256, help="give up above this many GPUs")
    p.add_argument("--plot", help="write attainment vs GPUs per policy to this PNG (needs matplotlib)")
    p.set_defaults(func=_compare)
