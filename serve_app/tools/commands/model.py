"""`aladdin model tiny`: write the embedded tiny model."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path


def _tiny(args: argparse.Namespace) -> int:
    from serve_app.tiny_model import DEFAULT_SPEC, build_tiny_model, ensure_tiny_model

    spec = replace(DEFAULT_SPEC, seed=args.seed)
    out = build_tiny_model(Path(args.out), spec) if args.out else ensure_tiny_model(spec)
    print(out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    kinds = sub.add_parser("model", help="build local models").add_subparsers(dest="kind", required=True)
    tiny = kinds.add_parser("tiny", help="write the embedded tiny Llama model and tokenizer")
    tiny.add_argument("--out", help="directory to write (default: the per-user cache)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_tiny)
