"""The minimal-GPU planner and the `aladdin plan` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.planning.planner import Workload, _WorkerModel, plan
from predictors.latency import load_profile_family
from serve_app.tools.cli import main

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


def test_erlang_c_matches_known_values():
    from placement.planning.planner import erlang_c

    assert erlang_c(1, 0.6) == pytest.approx(0.6)  # M/M/1: an arrival waits with probability rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(10, 0.0) == 0.0 and erlang_c(3, 3.5) == 1.0
    assert erlang_c(400, 380.0) < erlang_c(40, 38.0) < 1  # pooling: same utilization, less waiting


def test_the_planned_rate_covers_bursts_beyond_poisson_only():
    from placement.traces import synthetic

    def rate_of(trace):
        arrivals = np.array([r.arrival_s for r in trace])
        w = Workload(len(trace) / arrivals[-1], INPUTS[: len(trace)], OUTPUTS[: len(trace)], 1.0, 0.05, arrival_s=arrivals)
        return w.planning_rate_per_s() / w.rate_per_s

    assert rate_of(synthetic(2000, 20.0, seed=1)) == pytest.approx(1.0, abs=0.05)
    assert rate_of(synthetic(2000, 20.0, arrival="gamma", cv=4.0, seed=1)) > 1.1
    steady = Workload(20.0, INPUTS, OUTPUTS, 1.0, 0.05)
    assert steady.planning_rate_per_s() == 20.0  # no arrival times: the mean


def test_short_replies_behind_long_prompts_need_workers_for_their_prefill_stalls():
    # 2k-token prompts, 3-8 token replies: a worker's decode is nearly idle, but every prefill
    # landing on a fresh short reply breaks its ATGT; the pooled model spreads prompts
    prompts, replies = np.full(500, 2000.0), np.resize(np.array([3.0, 5.0, 8.0]), 500)
    workload = Workload(20.0, prompts, replies, 1.0, 0.05)
    model = _WorkerModel(FAMILY.profile(1), workload, token_budget=2048)
    fragile_s, breakable = model.fragile_s(model.load(1.0))
    assert fragile_s > 0 and breakable == pytest.approx(1 / 3, abs=0.01)  # a 2k prefill breaks the 3-token replies
    misses = [max(model.pooled_misses(20.0, w)) for w in (6, 8, 12, 24)]
    assert misses == sorted(misses, reverse=True) and misses[-1] < workload.miss_budget < misses[0]
    option = plan(FAMILY, workload).options[0]
    mean_field_rate, _, _ = model.max_rate()
    assert option.binding in ("stall", "ttft") and option.needed_workers > np.ceil(20.0 / mean_field_rate)


def test_cached_prefixes_lower_the_plan_and_a_finite_cache_less_than_an_unbounded_one():
    from dataclasses import replace

    from placement.planning.planner import plan_tp
    from placement.prefix_cache import Prefix, pooled_hits

    rng = np.random.default_rng(3)
    n = 2000
    # conversations of growing prompts: each turn repeats the last one's blocks and adds two
    conversations = rng.integers(0, 150, n)
    turns: dict[int, int] = {}
    prefixes, inputs = [], []
    for c in conversations:
        turns[c] = turns.get(c, 0) + 1
        blocks = 2 * turns[c]
        prefixes.append(Prefix(512, tuple(hash((int(c), i)) for i in range(blocks))))
        inputs.append(512 * blocks + 100)
    inputs = np.minimum(np.array(inputs), 3900)
    prefixes = [p.whole(int(l)) for p, l in zip(prefixes, inputs)]
    base = Workload(rate_per_s=40.0, input_lens=inputs, output_lens=np.full(n, 50), slo_ttft_s=1.0, slo_atgt_s=0.05)
    profile = FAMILY.profile(1)
    cold = plan_tp(profile, base, 0.0)
    unbounded = plan_tp(profile, replace(base, cached_lens=np.array(pooled_hits(zip(prefixes, map(int, inputs))))), 0.0)
    planned = plan_tp(profile, replace(base, prefixes=tuple(prefixes)), 0.0)
    assert unbounded.needed_workers < cold.needed_workers
    assert unbounded.needed_workers <= planned.needed_workers <= cold.needed_workers


def test_plan_command_plans_the_trace_as_compare_does_bursts_and_all(tmp_path, capsys):
    from placement.traces import load_trace, synthetic

    bursty = synthetic(1500, 8.0, arrival="gamma", cv=4.0, seed=3)
    path = tmp_path / "bursty.jsonl"
    path.write_text("".join(json.dumps({"timestamp": int(r.arrival_s * 1000), "input_length": r.input_len,
                                        "output_length": r.output_len, "hash_ids": []}) + "\n" for r in bursty))
    base = ["plan", "--trace", str(path), "--profile-family", "llama-2-7b-a100",
            "--slo-ttft", "1", "--slo-atgt", "0.05", "--json"]
    assert main(base) == 0
    report = json.loads(capsys.readouterr().out)
    # compare's planner reads the trace through the same Workload: the same choice
    expected = plan(FAMILY, Workload.of_trace(load_trace(str(path)), 1.0, 0.05))
    assert report["choice"]["gpus"] == expected.choice.gpus
    assert report["trace"]["planning_rate_per_s"] > 1.1 * report["trace"]["rate_per_s"]
    # --rate scales the arrivals (their bursts too), not only the mean
    assert main([*base, "--rate", str(2 * report["trace"]["rate_per_s"])]) == 0
    doubled = json.loads(capsys.readouterr().out)
    # (not exactly twice: the windows the bursts are counted over stay as long)
    assert doubled["trace"]["planning_rate_per_s"] > 1.5 * report["trace"]["planning_rate_per_s"]
    assert doubled["choice"]["gpus"] > report["choice"]["gpus"]
    for bad in (["--target", "1.5"], ["--rate", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main([*base, *bad])
        assert exit_.value.code not in (0, None)
