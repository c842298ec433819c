"""`aladdin demo`: deploy 2 tiny workers locally and send a short burst."""

from __future__ import annotations

import argparse
import json


def _demo(args: argparse.Namespace) -> int:
    from serve_app.tools.demo import DemoOptions, run_demo

    summary = run_demo(
        DemoOptions(workers=args.workers, requests=args.requests, rate=args.rate, seed=args.seed, port=args.port)
    )
    if args.json:
        print(json.dumps(summary))
    return 0 if summary["failed"] == 0 and summary["ray_processes_left"] == 0 else 1


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="deploy 2 tiny workers locally and send a short burst")
    demo.add_argument("--workers", type=int, default=2)
    demo.add_argument("--requests", type=int, default=48)
    demo.add_argument("--rate", type=float, default=3.0, help="mean arrivals per second")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--json", action="store_true", help="also print the summary as JSON")
    demo.set_defaults(func=_demo)
