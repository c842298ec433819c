"""`placement.evaluation.compare` and `aladdin compare`: the GPU-count search, the JSON, the plot."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.evaluation.compare import (
    AUTOSCALED,
    QUEUE_TARGET_GRID,
    AutoscaledResult,
    Comparison,
    PolicyResult,
    compare,
    fewest_meeting,
    run_autoscaled,
)
from placement.simulator.autoscale import DEFAULT_TARGET_ONGOING_REQUESTS
from placement.simulator.scenario import Scenario
from placement.traces import synthetic
from predictors.latency import load_profile_family

FAMILY = load_profile_family("llama-2-7b-a100")
POLICIES = {"aladdin", "rr", "jsq", "p2c", "p2c-default"}


def _scenario(seed: int = 0) -> Scenario:
    # ~40 req/s for 10 s: more than one TP1 worker can serve, so the search has work to do
    return Scenario.fitted(
        synthetic(400, 40.0, seed=5), FAMILY.profile(FAMILY.tps[0]), slo_ttft_s=1.0, slo_atgt_s=0.05,
        warmup_s=5.0, seed=seed,
    )


@pytest.fixture(scope="module")
def comparison() -> Comparison:
    return compare(_scenario(), FAMILY, target=0.9, max_gpus=64)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 70), st.integers(-5, 80), st.integers(1, 64))
def test_fewest_meeting_finds_the_threshold_from_any_start(threshold, start, upper):
    probes: list[int] = []

    def meets(n: int) -> bool:
        assert 1 <= n <= upper
        probes.append(n)
        return n >= threshold

    assert fewest_meeting(meets, start, upper) == (threshold if threshold <= upper else None)
    assert len(probes) <= 2 * upper.bit_length() + 2


def test_json_shape(comparison):
    out = json.loads(json.dumps(comparison.to_dict()))
    assert set(out["policies"]) == POLICIES
    for name, r in out["policies"].items():
        assert {"min_gpus", "tp", "attainment", "curve"} <= set(r), name
    assert out["policies"]["p2c-default"]["tp"] == 4
    assert {out["policies"][p]["tp"] for p in ("aladdin", "rr", "jsq", "p2c")} == {out["planner"]["tp"]}
    assert set(out["ratios"]) == {
        "aladdin_vs_p2c_default", "aladdin_vs_best_same_tp", "autoscaled_gpu_hours_aladdin_vs_queue_length",
        "autoscaled_gpu_hours_aladdin_vs_queue_length_default",
    }
    assert {(p, r["scaler"]) for p, r in out["autoscaled"].items()} == {*AUTOSCALED, ("p2c-at-target", "queue-length")}
    for r in out["autoscaled"].values():
        assert r["gpu_hours"] > 0 and 0 <= r["attainment"] <= 1 and "timeline" not in r


def test_min_gpus_is_the_first_point_of_the_curve_at_the_target(comparison):
    for name, r in comparison.policies.items():
        assert r.min_gpus is not None, name
        curve = dict(r.curve)
        assert curve[r.min_gpus] == r.attainment >= comparison.target
        assert all(a < comparison.target for g, a in r.curve if g < r.min_gpus), name
        # the search proved the count one worker smaller misses (or there is none)
        assert r.min_gpus == r.tp or curve[r.min_gpus - r.tp] < comparison.target, name


def test_ratios_come_from_min_gpus(comparison):
    p = comparison.policies
    ratios = comparison.ratios()
    assert ratios["aladdin_vs_p2c_default"] == p["aladdin"].min_gpus / p["p2c-default"].min_gpus
    best = min(p[n].min_gpus for n in ("rr", "jsq", "p2c"))
    assert ratios["aladdin_vs_best_same_tp"] == p["aladdin"].min_gpus / best
    scaled = comparison.autoscaled
    assert ratios["autoscaled_gpu_hours_aladdin_vs_queue_length_default"] == scaled["aladdin"].gpu_hours / scaled["p2c"].gpu_hours
    tuned = scaled["p2c-at-target"]
    expected = scaled["aladdin"].gpu_hours / tuned.gpu_hours if tuned.attainment >= comparison.target else None
    assert ratios["autoscaled_gpu_hours_aladdin_vs_queue_length"] == expected


def test_the_tuned_queue_length_rule_is_its_cheapest_setting_that_meets_the_target(comparison):
    scaled = comparison.autoscaled
    default, tuned = scaled["p2c"], scaled["p2c-at-target"]
    assert default.target_ongoing_requests == DEFAULT_TARGET_ONGOING_REQUESTS and tuned.scaler == "queue-length"
    grid = sorted(set(QUEUE_TARGET_GRID) | {DEFAULT_TARGET_ONGOING_REQUESTS})
    assert tuned.target_ongoing_requests in grid
    if tuned.attainment >= comparison.target:
        larger = [g for g in grid if g > tuned.target_ongoing_requests]
        if larger:  # the next cheaper setting misses the target
            at_tp = _scenario().with_profile(FAMILY.profile(tuned.tp))
            cheaper = run_autoscaled(at_tp, "p2c", "queue-length", tuned.start_workers, 64 // tuned.tp,
                                     scaler_options={"target_ongoing_requests": larger[0]})
            assert cheaper.attainment < comparison.target
    else:
        assert tuned.target_ongoing_requests == grid[0]


def test_ratios_are_none_when_a_policy_never_reaches_the_target():
    results = {name: PolicyResult(name, 1, 4, 0.99) for name in POLICIES}
    results["p2c-default"] = PolicyResult("p2c-default", 4, None, None)
    results["rr"] = PolicyResult("rr", 1, 2, 0.995)
    ratios = Comparison(0.99, 1, 4, results).ratios()
    assert ratios == {"aladdin_vs_p2c_default": None, "aladdin_vs_best_same_tp": 2.0}


def test_autoscaled_goal_compares_runs_that_meet_the_target():
    results = {name: PolicyResult(name, 1, 4, 0.99) for name in POLICIES}
    results["p2c-default"] = PolicyResult("p2c-default", 4, 8, 0.995)
    name = "autoscaled_gpu_hours_aladdin_vs_queue_length"

    def scaled(policy: str, gpu_hours: float, attainment: float) -> AutoscaledResult:
        return AutoscaledResult(policy, "s", 1, 2, gpu_hours, attainment, 4, 100.0)

    def runs(aladdin: tuple[float, float], tuned: tuple[float, float]) -> Comparison:
        return Comparison(0.99, 1, 4, results, {"aladdin": scaled("aladdin", *aladdin), "p2c": scaled("p2c", 1.0, 0.9),
                                                "p2c-at-target": scaled("p2c-at-target", *tuned)})

    cheaper_but_missing = runs((1.0, 0.98), (2.0, 0.999))
    assert cheaper_but_missing.goals() == {"aladdin_vs_p2c_default": True, "aladdin_vs_best_same_tp": False, name: False}
    assert runs((1.0, 0.999), (2.0, 0.995)).goals()[name] is True
    assert runs((1.5, 0.999), (2.0, 0.995)).goals()[name] is False  # 0.75 > 0.7
    # the rule never met the target at any setting: Aladdin's run meeting it is the goal
    never = runs((3.0, 0.995), (9.0, 0.95))
    assert never.ratios()[name] is None and never.goals()[name] is True
    assert runs((3.0, 0.985), (9.0, 0.95)).goals()[name] is False
    results["p2c-default"] = PolicyResult("p2c-default", 4, None, None)
    assert Comparison(0.99, 1, 4, results).goals()["aladdin_vs_p2c_default"] is None


def test_same_seed_same_result(comparison):
    assert compare(_scenario(), FAMILY, target=0.9, max_gpus=64).to_dict() == comparison.to_dict()


def test_cli_writes_json_and_a_png(tmp_path, capsys):
    from serve_app.tools.cli import main

    trace = tmp_path / "t.jsonl"
    trace.write_text(
        "\n".join(
            f'{{"timestamp": {int(r.arrival_s * 1000)}, "input_length": {r.input_len}, '
            f'"output_length": {r.output_len}}}'
            for r in synthetic(200, 20.0, seed=4)
        )
    )
    png = tmp_path / "compare.png"
    argv = ["compare", "--trace", str(trace), "--profile-family", "llama-2-7b-a100", "--slo-ttft", "1",
            "--slo-atgt", "0.05", "--target", "0.9", "--max-gpus", "32", "--json", "--plot", str(png)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["policies"]) == POLICIES and "autoscaled" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000  # two panels with curves, not an empty canvas
