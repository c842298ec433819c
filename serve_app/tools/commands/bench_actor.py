"""`aladdin bench-actor`: probe the placement actor end to end through Ray (simulated workers'
heartbeats and concurrent callers of the ingress's and the router's calls).

  aladdin bench-actor --workers 64 --running 16 --callers 16 --duration 10 --json --out actor.json
"""

from __future__ import annotations

import argparse
import sys


def _bench(args: argparse.Namespace) -> int:
    from serve_app.tools.bench_actor import BenchActorOptions, run_bench_actor
    from serve_app.tools.result_output import print_result

    try:
        options = BenchActorOptions(
            workers=args.workers, running=args.running, callers=args.callers, shards=args.shards,
            admission=args.admission, coalesce=not args.no_coalesce, full_heartbeats=args.full_heartbeats,
            workers_per_node=args.workers_per_node, in_phase=args.in_phase, duration_s=args.duration,
            warmup_s=args.warmup,
            profile_family=args.profile_family, seed=args.seed,
        )
    except ValueError as exc:
        print(f"aladdin bench-actor: {exc}", file=sys.stderr)
        return 2
    print_result(run_bench_actor(options), args.json, args.out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-actor", help="probe the placement actor through Ray: placements/s, round trips")
    p.add_argument("--workers", type=int, default=64, help="simulated workers sending heartbeats")
    p.add_argument("--running", type=int, default=16, help="requests each worker keeps running besides those placed")
    p.add_argument("--callers", type=int, default=16, help="concurrent callers placing one request after another")
    p.add_argument("--shards", type=int, default=1, help="placement actors (placement.shards), each owning the workers whose id hashes to it")
    p.add_argument("--admission", action="store_true", help="callers go through SLO-aware admission first")
    p.add_argument("--no-coalesce", action="store_true",
                   help="one actor call per admission and placement (the ingress and router coalesce them)")
    p.add_argument("--full-heartbeats", action="store_true",
                   help="every heartbeat a full report (workers send deltas), to measure what deltas save")
    p.add_argument("--workers-per-node", type=int, default=1,
                   help="> 1: each node's workers report through its heartbeat relay (placement.heartbeat_relay)")
    p.add_argument("--in-phase", action="store_true",
                   help="every worker reports at the same instant (the worst case; else each node on its own phase, as in a cluster)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds run before measuring")
    p.add_argument("--profile-family", default="llama-2-7b-a100")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", help="write the result as JSON to this file")
    p.set_defaults(func=_bench)
