"""The `aladdin` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _model_tiny(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from serve_app.tiny_model import DEFAULT_SPEC, build_tiny_model, ensure_tiny_model

    spec = replace(DEFAULT_SPEC, seed=args.seed)
    out = build_tiny_model(Path(args.out), spec) if args.out else ensure_tiny_model(spec)
    print(out)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from serve_app.demo import DemoOptions, run_demo

    summary = run_demo(
        DemoOptions(workers=args.workers, requests=args.requests, rate=args.rate, seed=args.seed, port=args.port)
    )
    if args.json:
        print(json.dumps(summary))
    return 0 if summary["failed"] == 0 and summary["ray_processes_left"] == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aladdin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="build local models").add_subparsers(dest="kind", required=True)
    tiny = model.add_parser("tiny", help="write the embedded tiny Llama model and tokenizer")
    tiny.add_argument("--out", help="directory to write (default: the per-user cache)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_model_tiny)

    demo = sub.add_parser("demo", help="deploy 2 tiny workers locally and send a short burst")
    demo.add_argument("--workers", type=int, default=2)
    demo.add_argument("--requests", type=int, default=48)
    demo.add_argument("--rate", type=float, default=3.0, help="mean arrivals per second")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--json", action="store_true", help="also print the summary as JSON")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
