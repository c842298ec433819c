"""`aladdin bench-placement`: time a placement policy's decision on a large cluster state."""

from __future__ import annotations

import argparse
import json


def _bench(args: argparse.Namespace) -> int:
    from placement.evaluation.bench import run

    result = run(
        policy_name=args.policy, workers=args.workers, inflight=args.inflight, decisions=args.decisions,
        seed=args.seed, family=args.profile_family, tp=args.tp, prefix_share=args.prefix_share,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(
            f"{result.policy} on {result.workers} workers, {result.inflight} in flight: "
            f"p50 {result.p50_us:.0f} us, p99 {result.p99_us:.0f} us, {result.decisions_per_s:.0f} decisions/s"
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-placement", help="time placement decisions on a large simulated cluster")
    p.add_argument("--workers", type=int, default=1000)
    p.add_argument("--inflight", type=int, default=50_000, help="requests resident over all workers")
    p.add_argument("--decisions", type=int, default=5000, help="timed decisions")
    p.add_argument("--policy", default="aladdin", help="aladdin, rr, jsq, p2c, least-kv or prefix-affinity")
    p.add_argument("--profile-family", default="llama-2-7b-a100")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefix-share", type=float, default=0.0,
                   help="workers keep prefix caches and this share of requests continues an earlier conversation")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_bench)
