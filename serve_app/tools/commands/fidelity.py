"""`aladdin fidelity`: replay real benchmark runs (`aladdin bench --out` folders) in the
simulator with a worker profile and report per-request TTFT/ATGT errors and attainment gaps.

  aladdin fidelity --runs bench-results/aladdin/x1/rep0 ... --profile-family tiny-cpu --workers 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _aladdin_options(policy: str, summary: dict, atgt_margin: float | None) -> dict | None:
    """A fixed packing margin: the override, else the one the run's server used if it had one
    (runs before the budget adapted recorded it); None: the adaptive budget, as served now."""
    margin = atgt_margin if atgt_margin is not None else summary.get("placement_atgt_margin")
    return {"atgt_margin": margin} if policy == "aladdin" and margin is not None else None


def _run(args: argparse.Namespace) -> int:
    from placement.admission import AdmissionLimits
    from placement.evaluation.fidelity import recorded_placement_delay_s, run_timing, simulate_observed
    from placement.simulator.worker_engine import EngineOptions
    from predictors.latency import load_profile_family
    from predictors.latency.profile import load_profile
    from serve_app.tools.bench import observed_requests

    profile = load_profile(args.profile) if args.profile else load_profile_family(args.profile_family).profile(1)
    if args.report_period < 0:
        raise SystemExit("--report-period must be >= 0")
    engine = EngineOptions(max_num_seqs=args.max_num_seqs, chunked_prefill=True, max_batched_tokens=args.max_batched_tokens,
                           report_period_s=args.report_period)
    runs = [(run_dir, *observed_requests(run_dir)) for run_dir in args.runs]
    summaries = [summary for _, summary, _ in runs]
    rows = []
    for run_dir, summary, observed in runs:
        policy = args.policy or summary.get("system") or "aladdin"
        admits = args.admission == "on" or (args.admission == "auto" and policy == "aladdin")
        timing = run_timing(profile, summary, summaries) if args.corrected else None
        report = simulate_observed(
            observed, profile, policy=policy, workers=args.workers, slo_ttft_s=summary["slo_ttft_ms"] / 1e3,
            slo_atgt_s=summary["slo_atgt_ms"] / 1e3, engine=engine, seed=args.seed,
            admission=AdmissionLimits(args.max_waiting) if admits else None,
            policy_options=_aladdin_options(policy, summary, args.atgt_margin), timing_profile=timing,
            placement_delay_s=recorded_placement_delay_s(summary) if args.corrected else 0.0,
        )
        rows.append({"run": str(run_dir), "policy": policy, "offered_rate_per_s": summary.get("offered_rate_per_s"),
                     "corrected": timing is not None, **report.to_dict()})
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'run':<40} {'req':>5} {'TTFT err':>9} {'sim/real':>8} {'ATGT err':>9} {'sim/real':>8} "
              f"{'by batch (low/mid/high)':>23} {'real att':>9} {'sim att':>8}")
        for r in rows:
            by_batch = "/".join(f"{v:.2f}" for v in r["atgt_ratio_by_batch"])
            print(f"{r['run'][-40:]:<40} {r['requests']:>5} {r['ttft_median_rel_error']:>9.1%} "
                  f"{r['ttft_median_ratio']:>8.2f} {r['atgt_median_rel_error']:>9.1%} {r['atgt_median_ratio']:>8.2f} "
                  f"{by_batch:>23} {r['real_attainment']:>9.3f} {r['sim_attainment']:>8.3f}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from placement.admission import AdmissionLimits
    from serve_app.config import EngineConfig, PlacementConfig

    p = sub.add_parser("fidelity", help="compare the simulator with real benchmark runs, request by request")
    p.add_argument("--runs", nargs="+", required=True, help="`aladdin bench --out` folders (results.json)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--profile-family", default="tiny-cpu", help="committed profile family (TP 1)")
    what.add_argument("--profile", help="a worker profile JSON instead")
    p.add_argument("--workers", type=int, default=2, help="workers the real run had")
    p.add_argument("--policy", help="placement policy to simulate (default: the run's system)")
    p.add_argument("--max-num-seqs", type=int, default=EngineConfig().max_num_seqs,
                   help="vLLM max_num_seqs of the real engines (default: this app's)")
    p.add_argument("--max-batched-tokens", type=int, help="vLLM max_num_batched_tokens (default: the simulator's)")
    p.add_argument("--report-period", type=float, default=PlacementConfig().heartbeat_s,
                   help="the workers' heartbeat period, s: a finished request leaves simulated placement's view at "
                        "the next report, as it left the live actor's (default: this app's)")
    p.add_argument("--admission", choices=("auto", "on", "off"), default="auto",
                   help="simulate the server's SLO-aware admission (auto: for aladdin, as the server's default)")
    p.add_argument("--max-waiting", type=int, default=AdmissionLimits.max_waiting,
                   help="placement.max_waiting of the real server")
    p.add_argument("--atgt-margin", type=float,
                   help="aladdin's packing margin (default: the one the run recorded, else the policy's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--uncorrected", dest="corrected", action="store_false",
                   help="simulated engines on the profile as given, not scaled by the latency corrections the "
                        "runs' placement actor recorded (runs without their own use the others'; a run without "
                        "a closed loop takes its TTFT offset from those with one)")
    p.add_argument("--out", help="also write the rows as JSON to this file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)
