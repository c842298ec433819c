"""`aladdin soak`: many requests against a local deployment; every one must end with a response
or an explicit error (lost = 0), and no process may grow past 10% after warm-up."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from serve_app.tools.soak import SoakOptions, run_soak

    options = SoakOptions(requests=args.requests, duration_s=args.duration, warmup_s=args.warmup,
                          workers=args.workers, max_tokens=args.max_tokens, port=args.port, seed=args.seed)
    result = run_soak(options, args.out)
    report = result.to_dict()
    growth = sorted(report["memory_growth"].items(), key=lambda kv: -kv[1])
    print(f"{options.requests} requests in {result.wall_s:.0f} s: {report['outcomes']}; lost {result.lost}")
    for error in result.errors[:5]:
        print("  error:", error)
    for name, g in growth[:8]:
        print(f"  {name:<70} {report['memory_mb_after_warmup'][name]:8.1f} MB -> "
              f"{report['memory_mb_at_end'][name]:8.1f} MB ({g:+.1%})")
    ok = result.lost == 0 and report["max_memory_growth"] <= args.max_growth
    print("soak", "passed" if ok else "FAILED", f"(lost 0 and memory growth <= {args.max_growth:.0%} required)")
    return 0 if ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("soak", help="long load on a local deployment: nothing lost, memory flat")
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--duration", type=float, default=600.0, help="seconds over which requests are sent")
    p.add_argument("--warmup", type=float, default=30.0, help="seconds before the first memory sample")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--max-growth", type=float, default=0.10, help="allowed RSS growth per process")
    p.add_argument("--port", type=int, default=8200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="soak-results")
    p.set_defaults(func=_run)
