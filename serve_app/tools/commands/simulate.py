"""`aladdin simulate`: replay a trace on simulated workers under a placement policy."""

from __future__ import annotations

import argparse
import json


def add_scenario_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by `simulate` and `compare`: trace, profile family, SLOs, engine, lengths."""
    from placement.simulator.length_model import DEFAULT_LENGTH_MODEL, LENGTH_MODELS

    p.add_argument("--trace", required=True, help="Azure CSV (.csv) or Mooncake JSONL (.jsonl)")
    p.add_argument("--profile-family", required=True, help="e.g. llama-2-7b-a100, tiny-cpu")
    p.add_argument("--slo-ttft", type=float, required=True, help="TTFT SLO, s")
    p.add_argument("--slo-atgt", type=float, required=True, help="ATGT SLO, s per token")
    p.add_argument("--rate-scale", type=float, default=1.0, help="arrivals k times as fast")
    p.add_argument("--limit", type=int, help="use only the first N requests of the trace")
    p.add_argument("--queue-order", default="fifo", help="fifo, slo-dbs, odbs, slo-odbs")
    p.add_argument("--length-model", default=DEFAULT_LENGTH_MODEL, choices=LENGTH_MODELS,
                   help="what placement is told about reply lengths (default: %(default)s)")
    p.add_argument("--mae-ratio", type=float, default=0.3, help="noisy length model: MAE / true length")
    p.add_argument("--coverage", type=float, default=0.9, help="noisy length model: P(true <= upper)")
    p.add_argument("--no-chunked-prefill", action="store_true",
                   help="prefill-first iterations (vLLM v0) instead of v1's chunked prefill, the default")
    p.add_argument("--max-batched-tokens", type=int, help="token budget of one iteration")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--report-period", type=float, default=0.0,
                   help="workers report to placement this often, s (the live heartbeat, 0.25): a finished "
                        "request leaves placement's view at the next report (default 0: at once)")
    p.add_argument("--warmup-s", type=float, default=0.0, help="delay before an added worker serves")
    p.add_argument("--no-rebalance", action="store_true", help="turn error-aware rebalancing off")
    p.add_argument("--prefix-cache", action="store_true",
                   help="engines cache prompt prefixes (vLLM's prefix caching, from a Mooncake trace's hash_ids) "
                        "and Aladdin places by what each worker's cache holds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON")


def add_aladdin_arguments(p: argparse.ArgumentParser) -> None:
    """Aladdin policy options shared by `simulate` and `compare` (defaults: the policy's)."""
    p.add_argument("--on-infeasible", choices=("wait", "least-violation"),
                   help="aladdin: when no worker fits (simulator default: least-violation)")
    p.add_argument("--atgt-margin", type=float,
                   help="aladdin: a fixed share of the ATGT SLO best fit packs a worker to, in (0, 1] "
                        "(an expert override; default: the share adapts to the target attainment)")
    p.add_argument("--spread", action="store_true",
                   help="aladdin: of the feasible workers take the roomiest (worst fit), not the fullest (best fit)")


def aladdin_options(args: argparse.Namespace) -> dict | None:
    """The Aladdin constructor options the arguments set (None: all defaults)."""
    options = {"on_infeasible": args.on_infeasible, "atgt_margin": args.atgt_margin, "spread": args.spread or None}
    return {k: v for k, v in options.items() if v is not None} or None


def build_scenario(args: argparse.Namespace, tp: int):
    """The Scenario the arguments describe, on the family's profile for `tp`."""
    from placement.admission import AdmissionLimits
    from placement.simulator.scenario import Scenario
    from placement.simulator.worker_engine import EngineOptions
    from placement.traces import load_trace, scale_rate
    from predictors.latency import load_profile_family

    if args.report_period < 0:
        raise SystemExit("--report-period must be >= 0")
    trace = load_trace(args.trace)
    if args.limit is not None:
        trace = trace[: args.limit]
    if args.rate_scale != 1.0:
        trace = scale_rate(trace, args.rate_scale)
    engine = EngineOptions(
        max_num_seqs=args.max_num_seqs,
        max_batched_tokens=args.max_batched_tokens,
        chunked_prefill=not args.no_chunked_prefill,
        prefix_caching=args.prefix_cache,
        report_period_s=args.report_period,
    )
    return Scenario.fitted(
        trace,
        load_profile_family(args.profile_family).profile(tp),
        slo_ttft_s=args.slo_ttft,
        slo_atgt_s=args.slo_atgt,
        queue_order=args.queue_order,
        length_model=args.length_model,
        mae_ratio=args.mae_ratio,
        coverage=args.coverage,
        engine=engine,
        warmup_s=args.warmup_s,
        rebalance=not args.no_rebalance,
        seed=args.seed,
        admission=AdmissionLimits(args.max_waiting) if getattr(args, "admission", False) else None,
        shards=getattr(args, "shards", 1),
    )


def _simulate(args: argparse.Namespace) -> int:
    from placement.simulator.scenario import run
    from placement.simulator.split_phase import KVLink, run_split

    if args.split_phase and args.autoscale:
        raise SystemExit("--split-phase has no autoscaling")
    scenario = build_scenario(args, args.tp)
    policy_options = aladdin_options(args) if args.policy == "aladdin" else None
    split: dict = {}
    if args.split_phase:
        link = KVLink(gbps=args.kv_link_gbps, latency_s=args.kv_link_latency_ms / 1e3)
        result = run_split(
            scenario, args.policy, args.prefill_workers, args.decode_workers, link=link, policy_options=policy_options
        )
        split = {"split_phase": True, **result.split_dict()}
    else:
        result = run(
            scenario, args.policy, args.workers, policy_options=policy_options, autoscale=args.autoscale,
            autoscale_options={"period_s": args.autoscale_period_s} if args.autoscale else None,
        )
    out = {
        "trace": args.trace,
        "profile_family": args.profile_family,
        "tp": args.tp,
        "workers": args.prefill_workers + args.decode_workers if args.split_phase else args.workers,
        "policy": args.policy,
        "queue_order": args.queue_order,
        "length_model": args.length_model,
        "autoscale": args.autoscale,
        "shards": args.shards,
        "rate_scale": args.rate_scale,
        "seed": args.seed,
        **result.summary.to_dict(timeline=args.timeline),
        **split,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for key, value in out.items():
            print(f"{key:>16}: {value}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from placement.admission import AdmissionLimits

    p = sub.add_parser("simulate", help="replay a trace on simulated workers under a placement policy")
    add_scenario_arguments(p)
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree of every worker")
    p.add_argument("--workers", type=int, default=1, help="workers (the start count when autoscaling)")
    p.add_argument("--policy", default="aladdin", help="aladdin, rr, jsq, p2c, least-kv, prefix-affinity")
    add_aladdin_arguments(p)
    p.add_argument("--admission", action="store_true",
                   help="aladdin: the server's SLO-aware admission (wait while nothing fits, refuse once the "
                        "TTFT SLO is lost); refused requests count as missed")
    p.add_argument("--max-waiting", type=int, default=AdmissionLimits.max_waiting, help="with --admission: requests that may wait at once")
    p.add_argument("--shards", type=int, default=1,
                   help="placement shards: the workers split by id hash, each part placed by its own policy, a "
                        "request offered to the shard with the most room first (placement.sharding)")
    p.add_argument("--autoscale", choices=("planner", "queue-length"))
    p.add_argument("--autoscale-period-s", type=float, default=10.0)
    p.add_argument("--timeline", action="store_true", help="include GPUs held over time")
    p.add_argument("--split-phase", action="store_true",
                   help="prefill and decode workers as separate pools (--workers is then ignored)")
    p.add_argument("--prefill-workers", type=int, default=1, help="split-phase: prefill workers")
    p.add_argument("--decode-workers", type=int, default=1, help="split-phase: decode workers (placed by --policy)")
    p.add_argument("--kv-link-gbps", type=float, default=200.0,
                   help="split-phase: KV link bandwidth, gigabits/s (default 200 = 25 GB/s)")
    p.add_argument("--kv-link-latency-ms", type=float, default=1.0, help="split-phase: fixed time per KV transfer")
    p.set_defaults(func=_simulate)
