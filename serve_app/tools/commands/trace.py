"""`aladdin trace synth`: write a seeded synthetic workload (placement.evaluation.workloads) as a Mooncake
JSONL trace, which every `--trace` option reads."""

from __future__ import annotations

import argparse


def _synth(args: argparse.Namespace) -> int:
    import numpy as np

    from placement.traces import write_mooncake_jsonl
    from placement.evaluation.workloads import preset

    try:
        workload = preset(args.workload)
    except ValueError as exc:
        raise SystemExit(f"aladdin trace synth: {exc}") from None
    trace = workload.trace(seed=args.seed, rate_per_s=args.rate, duration_s=args.duration_s, requests=args.requests)
    if not trace:
        raise SystemExit("aladdin trace synth: no requests (raise --rate, --duration-s or --requests)")
    write_mooncake_jsonl(trace, args.out)
    prompts = np.array([r.input_len for r in trace])
    replies = np.array([r.output_len for r in trace])
    print(f"{args.out}: {len(trace)} requests over {trace[-1].arrival_s:.0f} s ({workload.name}, seed "
          f"{workload.seed if args.seed is None else args.seed}); prompt median {np.median(prompts):.0f} "
          f"mean {prompts.mean():.0f}, reply median {np.median(replies):.0f} mean {replies.mean():.0f} tokens")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from placement.evaluation.workloads import PRESETS

    p = sub.add_parser("trace", help="generate traces")
    what = p.add_subparsers(dest="trace_command", required=True)
    synth = what.add_parser("synth", help="a seeded synthetic workload as Mooncake JSONL")
    synth.add_argument("--workload", required=True, help=f"preset: {', '.join(PRESETS)}")
    synth.add_argument("--seed", type=int, help="default: the preset's")
    synth.add_argument("--rate", type=float, help="requests per second (default: the preset's)")
    size = synth.add_mutually_exclusive_group()
    size.add_argument("--duration-s", type=float, help="seconds of arrivals (default: the preset's)")
    size.add_argument("--requests", type=int, help="number of requests instead of a duration")
    synth.add_argument("--out", required=True, help="JSONL file to write")
    synth.set_defaults(func=_synth)
