"""The minimal-GPU planner and the `aladdin plan` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.planner import Workload, _WorkerModel, plan
from predictors.latency import load_profile_family
from serve_app.cli import main

FAMILY = load_profile_family("llama-2-7b-a100")
RNG = np.random.default_rng(0)
INPUTS = np.minimum(RNG.lognormal(6.5, 1.0, 2000).astype(int) + 1, 3000)
OUTPUTS = np.minimum(RNG.lognormal(5.0, 1.0, 2000).astype(int) + 1, 1000)


def _workload(rate: float, ttft: float = 1.0, atgt: float = 0.05) -> Workload:
    return Workload(rate, INPUTS, OUTPUTS, ttft, atgt)


def test_the_per_worker_rate_is_the_edge_of_the_slos():
    model = _WorkerModel(FAMILY.profile(1), _workload(1.0))
    rate, load, binding = model.max_rate()
    assert rate > 0 and binding in ("kv", "atgt", "ttft", "stability")
    assert max(model.violations(load).values()) <= 1
    assert max(model.violations(model.load(rate * 1.01)).values()) > 1


@settings(max_examples=20, deadline=None)
@given(st.floats(0.5, 200), st.floats(1.05, 3))
def test_more_traffic_never_needs_fewer_gpus(rate, factor):
    low, high = plan(FAMILY, _workload(rate)), plan(FAMILY, _workload(rate * factor))
    assert high.choice.gpus >= low.choice.gpus


def test_choice_is_the_fewest_gpus_with_ties_to_lower_tp():
    result = plan(FAMILY, _workload(40.0))
    usable = [o for o in result.options if o.usable]
    assert [o.tp for o in result.options] == FAMILY.tps
    fewest = min(o.gpus for o in usable)
    assert result.choice.gpus == fewest
    assert result.choice.tp == min(o.tp for o in usable if o.gpus == fewest)
    for option in usable:
        assert option.workers * option.tp == option.gpus
        assert option.workers >= 40.0 / option.max_rate_per_worker * 1.1 - 1e-9


def test_tighter_atgt_lowers_the_per_worker_rate():
    loose = plan(FAMILY, _workload(10.0, atgt=0.08)).options[0]
    tight = plan(FAMILY, _workload(10.0, atgt=0.03)).options[0]
    assert tight.max_rate_per_worker < loose.max_rate_per_worker


def test_tp_groups_stay_inside_a_node_and_impossible_slos_give_no_choice():
    result = plan(FAMILY, _workload(10.0), gpus_per_node=4)
    assert [o.tp for o in result.options if not o.usable] == [8]
    assert "GPUs per node" in result.options[-1].reason
    impossible = plan(FAMILY, _workload(10.0, atgt=0.001))
    assert impossible.choice is None
    assert all("zero load" in o.reason for o in impossible.options)


def test_plan_command_prints_the_choice_and_reasoning(tmp_path, capsys):
    trace = tmp_path / "trace.csv"
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for i, (n, o) in enumerate(zip(INPUTS[:400], OUTPUTS[:400])):
        rows.append(f"2023-11-16 18:{i // 60:02d}:{i % 60:02d}.0000000,{n},{o}")
    trace.write_text("\n".join(rows) + "\n")
    argv = ["plan", "--trace", str(trace), "--profile-family", "llama-2-7b-a100",
            "--slo-ttft", "1", "--slo-atgt", "0.05", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trace"]["requests"] == 400
    assert report["rate_per_s"] == pytest.approx(400 / 399)
    assert report["choice"]["gpus"] == min(o["gpus"] for o in report["options"] if o["usable"])
    assert {o["tp"] for o in report["options"]} == set(FAMILY.tps)
