"""`aladdin bench-ingress`: the serving path's CPU per request in front of the engines (one
ingress replica, `sim` workers, closed-loop clients through Serve's HTTP proxy).

  aladdin bench-ingress --workers 4 --concurrency 16 --duration 20 --json --out ingress.json
"""

from __future__ import annotations

import argparse
import sys


def _bench(args: argparse.Namespace) -> int:
    from serve_app.tools.bench_ingress import BenchIngressOptions, run_bench_ingress
    from serve_app.tools.result_output import print_result

    try:
        options = BenchIngressOptions(
            workers=args.workers, concurrency=args.concurrency, duration_s=args.duration, warmup_s=args.warmup,
            max_tokens=args.max_tokens, stream=args.stream, chat=args.chat, policy=args.policy, port=args.port,
        )
    except ValueError as exc:
        print(f"aladdin bench-ingress: {exc}", file=sys.stderr)
        return 2
    print_result(run_bench_ingress(options), args.json, args.out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-ingress", help="the ingress path's CPU per request, on sim workers")
    p.add_argument("--workers", type=int, default=4, help="sim workers behind the one ingress replica")
    p.add_argument("--concurrency", type=int, default=16, help="closed-loop clients")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the measured window")
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--stream", action="store_true", help="streamed responses")
    p.add_argument("--chat", action="store_true", help="chat completions (else completions)")
    p.add_argument("--policy", default="aladdin", help="placement policy (serve-p2c: no placement actor)")
    p.add_argument("--port", type=int, default=8300)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", help="also write the JSON here")
    p.set_defaults(func=_bench)
