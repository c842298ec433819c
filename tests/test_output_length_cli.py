"""`aladdin predictor` argument handling (training itself is covered with synthetic data)."""

from __future__ import annotations

import pytest

from serve_app.tools.cli import build_parser
from serve_app.prediction.length_predictor import resolve_tokenizer_dir


def test_unknown_tokenizer_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(SystemExit, match="neither 'tiny' nor a tokenizer directory"):
        resolve_tokenizer_dir(str(tmp_path / "nope"))


def test_directory_without_tokenizer_files_is_a_clear_error(tmp_path) -> None:
    from predictors.output_length.tokenizer import load_tokenizer

    with pytest.raises(ValueError, match="not a Hugging Face tokenizer directory"):
        load_tokenizer(tmp_path)


def test_subcommands_parse() -> None:
    args = build_parser().parse_args(["predictor", "eval", "--json"])
    assert args.json and args.model is None
    args = build_parser().parse_args(["predictor", "train", "--tokenizer", "tiny", "--out", "x.json"])
    assert args.tokenizer == "tiny" and args.out == "x.json"
