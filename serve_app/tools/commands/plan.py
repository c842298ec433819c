"""`aladdin plan`: the minimal-GPU configuration for a trace's workload under given SLOs."""

from __future__ import annotations

import argparse
import json


def _plan(args: argparse.Namespace) -> int:
    import numpy as np

    from placement.planning.planner import Workload, plan
    from placement.traces import load_trace, truncate_to_context
    from predictors.latency import load_profile_family

    family = load_profile_family(args.profile_family)
    max_model_len = min(family.profile(tp).max_model_len for tp in family.tps)
    trace, truncated = truncate_to_context(load_trace(args.trace), max_model_len)
    if len(trace) < 2 or trace[-1].arrival_s <= 0:
        raise SystemExit("the trace needs at least two requests at different times")
    duration = trace[-1].arrival_s
    rate = args.rate if args.rate else len(trace) / duration
    inputs = np.array([r.input_len for r in trace])
    outputs = np.array([r.output_len for r in trace])
    workload = Workload(rate, inputs, outputs, args.slo_ttft, args.slo_atgt)
    result = plan(family, workload, headroom=args.headroom, gpus_per_node=args.gpus_per_node)
    report = {
        "trace": {
            "path": args.trace,
            "requests": len(trace),
            "duration_s": duration,
            "rate_per_s": len(trace) / duration,
            "truncated_to_context": truncated,
            "max_model_len": max_model_len,
            "input_mean": float(inputs.mean()),
            "output_mean": float(outputs.mean()),
        },
        "profile_family": family.name,
        **result.to_dict(),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if result.choice else 1
    print(f"{family.name}: {rate:.3g} req/s, SLO TTFT {args.slo_ttft} s, ATGT {args.slo_atgt} s")
    for option in result.options:
        need = f"{option.workers} workers, {option.gpus} GPUs" if option.usable else "unusable"
        print(f"  tp{option.tp}: {option.reason}; {need}")
    if result.choice is None:
        print("no configuration meets the SLOs")
        return 1
    print(f"choice: tp{result.choice.tp} x {result.choice.workers} workers = {result.choice.gpus} GPUs")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="minimal GPUs (workers x TP) for a trace under TTFT/ATGT SLOs")
    p.add_argument("--trace", required=True, help="Azure CSV or Mooncake JSONL trace")
    p.add_argument("--profile-family", required=True, help="e.g. llama-2-7b-a100")
    p.add_argument("--slo-ttft", type=float, required=True, help="TTFT SLO, s")
    p.add_argument("--slo-atgt", type=float, required=True, help="ATGT SLO, s per token")
    p.add_argument("--rate", type=float, help="arrival rate to plan for (default: the trace's mean rate)")
    p.add_argument("--headroom", type=float, default=0.1, help="extra capacity fraction (default 0.1)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="a TP group stays inside a node")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_plan)
