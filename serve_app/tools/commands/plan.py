"""`aladdin plan`: the minimal-GPU configuration for a trace's workload under given SLOs."""

from __future__ import annotations

import argparse
import json


def _plan(args: argparse.Namespace) -> int:
    from placement.packing_budget import DEFAULT_TARGET_ATTAINMENT
    from placement.planning.planner import Workload, plan
    from placement.traces import load_trace, scale_rate, truncate_to_context
    from predictors.latency import load_profile_family

    family = load_profile_family(args.profile_family)
    max_model_len = min(family.profile(tp).max_model_len for tp in family.tps)
    trace, truncated = truncate_to_context(load_trace(args.trace), max_model_len)
    if len(trace) < 2 or trace[-1].arrival_s <= 0:
        raise SystemExit("the trace needs at least two requests at different times")
    duration = trace[-1].arrival_s
    mean_rate = len(trace) / duration
    if args.rate is not None:  # the same arrivals, faster or slower: their burstiness is planned for too
        if args.rate <= 0:
            raise SystemExit("--rate must be > 0")
        trace = scale_rate(trace, args.rate / mean_rate)
    target = DEFAULT_TARGET_ATTAINMENT if args.target is None else args.target
    workload = Workload.of_trace(trace, args.slo_ttft, args.slo_atgt, target, prefix_caching=args.prefix_cache)
    result = plan(family, workload, headroom=args.headroom, gpus_per_node=args.gpus_per_node,
                  chunked=not args.no_chunked_prefill)
    report = {
        "trace": {
            "path": args.trace,
            "requests": len(trace),
            "duration_s": duration,
            "rate_per_s": mean_rate,
            "planning_rate_per_s": workload.planning_rate_per_s(),
            "truncated_to_context": truncated,
            "max_model_len": max_model_len,
            "input_mean": float(workload.input_lens.mean()),
            "output_mean": float(workload.output_lens.mean()),
        },
        "profile_family": family.name,
        "target_attainment": target,
        **result.to_dict(),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if result.choice else 1
    print(f"{family.name}: {workload.rate_per_s:.3g} req/s (planned for {workload.planning_rate_per_s():.3g}: "
          f"its busier windows), SLO TTFT {args.slo_ttft} s, ATGT {args.slo_atgt} s, target {target:g}")
    for option in result.options:
        need = f"{option.workers} workers, {option.gpus} GPUs" if option.usable else "unusable"
        print(f"  tp{option.tp}: {option.reason}; {need}")
    if result.choice is None:
        print("no configuration meets the SLOs")
        return 1
    print(f"choice: tp{result.choice.tp} x {result.choice.workers} workers = {result.choice.gpus} GPUs")
    return 0


def _attainment(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1, e.g. 0.99")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="minimal GPUs (workers x TP) for a trace under TTFT/ATGT SLOs")
    p.add_argument("--trace", required=True, help="Azure CSV or Mooncake JSONL trace")
    p.add_argument("--profile-family", required=True, help="e.g. llama-2-7b-a100")
    p.add_argument("--slo-ttft", type=float, required=True, help="TTFT SLO, s")
    p.add_argument("--slo-atgt", type=float, required=True, help="ATGT SLO, s per token")
    p.add_argument("--rate", type=float,
                   help="mean arrival rate to plan for: the trace's arrivals scaled to it (default: as they are)")
    p.add_argument("--target", type=_attainment, help="SLO attainment to plan for (default: placement's, 0.99)")
    p.add_argument("--prefix-cache", action="store_true",
                   help="engines cache prompt prefixes: plan with the hits the trace's prefixes allow")
    p.add_argument("--no-chunked-prefill", action="store_true", help="engines run prefill-first iterations")
    p.add_argument("--headroom", type=float, default=0.1, help="extra capacity fraction (default 0.1)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="a TP group stays inside a node")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_plan)
