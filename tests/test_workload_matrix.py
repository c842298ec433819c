"""Synthetic workload presets, `aladdin trace synth` and `aladdin compare-matrix`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.evaluation.compare_matrix import Cell, CellResult, geometric_mean, run_cell, summary, table_rows
from placement.traces import load_trace
from placement.evaluation.workloads import PRESETS, lengths_by_median, preset
from serve_app.tools.cli import main

STATED = {"prompt-heavy": (2000, 20), "long-replies": (300, 600)}


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(sorted(STATED)), st.integers(0, 10_000))
def test_presets_have_their_stated_medians_at_any_seed(name, seed):
    trace = preset(name).trace(seed=seed, requests=4000)
    prompts, replies = np.array([r.input_len for r in trace]), np.array([r.output_len for r in trace])
    prompt_median, reply_median = STATED[name]
    assert np.median(prompts) == pytest.approx(prompt_median, rel=0.08)
    assert np.median(replies) == pytest.approx(reply_median, rel=0.12)


def test_presets_are_seeded_and_bursty_is_bursty():
    assert preset("bursty").trace(requests=500) == preset("bursty").trace(requests=500)
    assert preset("bursty").trace(requests=500) != preset("bursty").trace(seed=9, requests=500)
    gaps = {name: np.diff([r.arrival_s for r in PRESETS[name].trace(requests=5000)]) for name in ("bursty", "prompt-heavy")}
    cv = {name: g.std() / g.mean() for name, g in gaps.items()}
    assert cv["bursty"] > 3 and cv["prompt-heavy"] == pytest.approx(1.0, abs=0.1)
    assert lengths_by_median(100, 0.0, 10, 0.0).input_mean == 100
    with pytest.raises(ValueError, match="presets: prompt-heavy"):
        preset("nope")


def test_trace_synth_writes_what_load_trace_reads(tmp_path, capsys):
    out = tmp_path / "ph.jsonl"
    assert main(["trace", "synth", "--workload", "prompt-heavy", "--requests", "300", "--seed", "4", "--out", str(out)]) == 0
    assert "300 requests" in capsys.readouterr().out
    read = load_trace(out)
    made = preset("prompt-heavy").trace(seed=4, requests=300)
    assert [(r.input_len, r.output_len) for r in read] == [(r.input_len, r.output_len) for r in made]
    assert [r.arrival_s for r in read] == pytest.approx([r.arrival_s for r in made])


def test_geometric_mean_skips_cells_without_a_ratio():
    assert geometric_mean([0.5, 2.0, None]) == (pytest.approx(1.0), 1)
    assert geometric_mean([None, None]) == (None, 2)


def test_a_cell_and_the_table(tmp_path):
    result = run_cell(Cell("bursty", "llama-2-7b-a100", 1.0), data_dir=tmp_path, slo_ttft_s=1.0, slo_atgt_s=0.05,
                      target=0.9, limit=400, autoscaled=False)
    out = result.to_dict()
    assert {"policies", "planner", "aladdin_at_2x_min", "planner_over_aladdin", "aladdin_over_best_same_tp"} <= set(out)
    assert set(out["policies"]) == {"aladdin", "rr", "jsq", "p2c", "p2c-default"}
    assert out["aladdin_at_2x_min"] >= out["policies"]["aladdin"]["attainment"] - 1e-9
    header, rows = table_rows([result])
    assert len(rows) == 1 and len(rows[0]) == len(header) and rows[0][0] == "bursty"
    never = CellResult(Cell("x", "f", 1.0), 1.0, {**result.comparison, "policies": {
        **result.comparison["policies"], "aladdin": {**result.comparison["policies"]["aladdin"], "min_gpus": None}}}, None)
    goals = summary([result, never])
    assert goals["cells_aladdin_never_reached"] == ["x f x1"] and goals["cells_without_ratio"] == 1
    assert "x f x1" in goals["cells_planner_off_by_more_than_20pct"]


def test_compare_matrix_command_writes_json(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["compare-matrix", "--workloads", "bursty", "--families", "llama-2-7b-a100", "--rate-scales", "1",
                 "--limit", "300", "--no-autoscaled", "--target", "0.9", "--json", str(out), "--markdown"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| workload") and "geomean_aladdin_over_best_same_tp" in printed
    data = json.loads(out.read_text())
    assert data["summary"]["cells"] == 1 and data["cells"][0]["workload"] == "bursty"
    with pytest.raises(SystemExit, match="unknown workload"):
        main(["compare-matrix", "--workloads", "nope", "--families", "llama-2-7b-a100", "--rate-scales", "1"])
