"""`aladdin predictor train|eval`: the output-length predictor's artifact."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from serve_app.prediction.length_predictor import (
    TINY,
    default_artifact_path,
    ensure_default_artifact,
    resolve_tokenizer_dir,
    train,
)


def _train(args: argparse.Namespace) -> int:
    tokenizer_dir = resolve_tokenizer_dir(args.tokenizer)
    if args.default:
        out = ensure_default_artifact(tokenizer_dir)
    else:
        out = train(tokenizer_dir, Path(args.out or default_artifact_path(tokenizer_dir)), args.threads)
    print(out)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from predictors.output_length import load_artifact
    from predictors.output_length.dataset import build_examples
    from predictors.output_length.evaluate import evaluate
    from predictors.output_length.tokenizer import load_tokenizer, token_counter
    from predictors.sharegpt import iter_conversations

    tokenizer_dir = resolve_tokenizer_dir(args.tokenizer)
    path = Path(args.model) if args.model else ensure_default_artifact(tokenizer_dir)
    try:
        artifact = load_artifact(path)
    except Exception as exc:
        raise SystemExit(f"cannot read artifact {path}: {exc}") from exc
    tokenizer = load_tokenizer(tokenizer_dir)
    examples = build_examples(iter_conversations(), token_counter(tokenizer))
    report = evaluate(artifact, examples, lambda text: tokenizer.encode(text, add_special_tokens=False))
    if args.json:
        print(report.model_dump_json())
    else:
        print(json.dumps(report.model_dump(), indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    actions = sub.add_parser("predictor", help="output-length predictor").add_subparsers(dest="action", required=True)
    tr = actions.add_parser("train", help="train the LightGBM output-length artifact on ShareGPT")
    tr.add_argument("--tokenizer", default=TINY, help="'tiny' (default) or a Hugging Face tokenizer directory")
    tr.add_argument("--out", help="artifact file (default: the per-user cache, named after the tokenizer)")
    tr.add_argument("--default", action="store_true", help="build the default artifact only if it is missing")
    tr.add_argument("--threads", type=int, default=2, help="LightGBM threads")
    tr.set_defaults(func=_train)
    ev = actions.add_parser("eval", help="evaluate an artifact on the held-out ShareGPT conversations")
    ev.add_argument("--model", help="artifact file (default: the default artifact, built if missing)")
    ev.add_argument("--tokenizer", default=TINY, help="tokenizer the artifact was trained for")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(func=_eval)
