"""Simulator fidelity and the served-profile fit, checked against the simulator itself: runs
it produces are 'observed' runs whose true latency model is known."""

from __future__ import annotations

import pytest

from placement.evaluation.fidelity import ObservedRequest, simulate_observed
from placement.simulator.scenario import Scenario, run
from placement.simulator.worker_engine import EngineOptions
from placement.traces import synthetic, LengthMix
from predictors.latency.families import load_profile_family
from predictors.latency.profile import DecodeModel
from predictors.latency.served_fit import ServedRequest, fit_served_profile

ENGINE = EngineOptions(max_num_seqs=128, chunked_prefill=True)
ATGT_SLO = 0.008


@pytest.fixture(scope="module")
def profile():
    base = load_profile_family("tiny-cpu").profile(1)
    # a slow 'served' worker, so that batches form at a few requests per second
    return base.model_copy(update={"decode": DecodeModel(d0_s=0.004, d1_s_per_seq=0.0008, d2_s_per_context_token=2e-7),
                                   "serving_overhead_s": 0.05, "serving_overhead_per_request_s": 0.002})


@pytest.fixture(scope="module")
def simulated(profile):
    trace = synthetic(400, 6.0, lengths=LengthMix(input_mean=400, output_mean=120), seed=2)
    scenario = Scenario.fitted(trace, profile, slo_ttft_s=0.5, slo_atgt_s=ATGT_SLO, engine=ENGINE)
    return scenario.trace, run(scenario, "jsq", 2).records


def test_replaying_a_simulated_run_reproduces_it(profile, simulated):
    trace, records = simulated
    observed = [ObservedRequest(sent_s=r.request.arrival_s, input_len=t.input_len, output_len=t.output_len, ok=True,
                                ttft_s=r.ttft_s, atgt_s=r.atgt_s if t.output_len > 1 else None)
                for t, r in zip(trace, records)]
    report = simulate_observed(observed[::-1], profile, policy="jsq", workers=2, slo_ttft_s=0.5, slo_atgt_s=ATGT_SLO,
                               engine=ENGINE)  # order of the observations must not matter
    assert report.compared == len(observed)
    assert report.ttft_median_rel_error < 1e-6 and report.atgt_median_rel_error < 1e-6
    assert report.attainment_gap_points == 0.0 and 0 < report.real_attainment < 1
    # requests the server refused are not replayed and count as missed on both sides
    refused = [ObservedRequest(o.sent_s, o.input_len, o.output_len, False, None, None) for o in observed[:40]]
    partial = simulate_observed(refused + observed[40:], profile, policy="jsq", workers=2, slo_ttft_s=0.5,
                                slo_atgt_s=ATGT_SLO, engine=ENGINE)
    assert partial.compared == len(observed) - 40 and partial.requests == len(observed)
    assert partial.real_attainment < report.real_attainment


def test_replaying_an_admitting_run_replays_what_it_refused(profile):
    from placement.admission import AdmissionLimits

    limits = AdmissionLimits(max_waiting=16)
    slo_atgt = 2 * ATGT_SLO  # room for a few requests per worker within the packing margin
    trace = synthetic(300, 40.0, lengths=LengthMix(input_mean=400, output_mean=120), seed=3)
    scenario = Scenario.fitted(trace, profile, slo_ttft_s=0.3, slo_atgt_s=slo_atgt, engine=ENGINE, admission=limits)
    records = run(scenario, "aladdin", 2).records
    assert any(r.refused for r in records) and not all(r.refused for r in records)
    observed = [ObservedRequest(r.request.arrival_s, t.input_len, t.output_len, ok=not r.refused,
                                ttft_s=None if r.refused else r.ttft_s, atgt_s=None if r.refused else r.atgt_s,
                                refused=r.refused)
                for t, r in zip(scenario.trace, records)]
    same = simulate_observed(observed, profile, policy="aladdin", workers=2, slo_ttft_s=0.3, slo_atgt_s=slo_atgt,
                             engine=ENGINE, admission=limits)
    assert same.ttft_median_rel_error < 1e-6 and same.attainment_gap_points == 0.0
    # without the refused requests the replay meets a lighter load than the real run did
    lighter = simulate_observed(observed, profile, policy="aladdin", workers=2, slo_ttft_s=0.3, slo_atgt_s=slo_atgt,
                                engine=ENGINE)
    assert lighter.compared == same.compared and lighter.ttft_median_rel_error > 0.01, lighter


def test_replay_with_a_wrong_profile_shows_the_error(profile, simulated):
    trace, records = simulated
    observed = [ObservedRequest(r.request.arrival_s, t.input_len, t.output_len, True, r.ttft_s, r.atgt_s)
                for t, r in zip(trace, records)]
    fast = profile.model_copy(update={"decode": DecodeModel(d0_s=0.002, d1_s_per_seq=0.0004, d2_s_per_context_token=1e-7)})
    report = simulate_observed(observed, fast, policy="jsq", workers=2, slo_ttft_s=0.5, slo_atgt_s=ATGT_SLO, engine=ENGINE)
    assert report.atgt_median_rel_error > 0.3


def test_served_fit_recovers_the_decode_model(profile, simulated):
    trace, records = simulated
    served = [ServedRequest(worker=r.worker_id, sent_s=r.request.arrival_s, input_len=t.input_len,
                            output_len=t.output_len, ttft_s=r.ttft_s, latency_s=r.ttft_s + r.finish_s - r.first_token_s)
              for t, r in zip(trace, records)]
    fitted = fit_served_profile(served, profile, source="test")
    # at the batch sizes this run had, the fitted step time matches the true one
    for batch, ctx in ((4, 2000), (8, 4000), (12, 6000)):
        assert fitted.decode_step_s(batch, ctx) == pytest.approx(profile.decode_step_s(batch, ctx), rel=0.15)
    assert fitted.fit.decode_mape_pct < 15 and fitted.fit.decode_points > 100
    assert fitted.kv == profile.kv and fitted.source == "test"
    assert fitted.serving_overhead_s == pytest.approx(0.05, abs=0.01)
    assert fitted.serving_overhead_per_request_s == pytest.approx(0.002, rel=0.25)
    assert fitted.prefill == profile.prefill  # engine time, not refitted


def test_served_fit_needs_enough_points(profile):
    few = [ServedRequest("w", i, 100, 10, 0.05, 0.2) for i in range(3)]
    with pytest.raises(ValueError, match="too few"):
        fit_served_profile(few, profile, source="test")


def test_served_fit_without_idle_workers_bounds_the_overhead_from_the_least_queued(profile, simulated):
    # every request overlapped another on its worker: no idle-worker TTFT to isolate the
    # serving path; the fit still gives a profile, its overhead from the least-queued requests
    trace, records = simulated
    busy = [ServedRequest(worker="w0", sent_s=0.001 * i, input_len=t.input_len, output_len=t.output_len,
                          ttft_s=r.ttft_s, latency_s=r.ttft_s + r.finish_s - r.first_token_s + 10.0)
            for i, (t, r) in enumerate(zip(trace, records))]
    fitted = fit_served_profile(busy, profile, source="test")
    assert "no worker was idle" in fitted.notes and fitted.serving_overhead_per_request_s == 0.0
    residuals = sorted(r.ttft_s - profile.prefill_time_s([r.input_len]) for r in busy)
    assert residuals[0] <= fitted.serving_overhead_s <= residuals[len(residuals) // 2]


def test_replay_on_the_corrections_the_run_recorded_undoes_a_wrong_profile(profile, simulated):
    from placement.evaluation.fidelity import corrected_timing

    trace, records = simulated
    observed = [ObservedRequest(r.request.arrival_s, t.input_len, t.output_len, True, r.ttft_s, r.atgt_s)
                for t, r in zip(trace, records)]
    # placement started from a profile that puts decode at half its time; the live loop learned 2x
    half = profile.model_copy(update={"decode": DecodeModel(d0_s=0.002, d1_s_per_seq=0.0004, d2_s_per_context_token=1e-7)})
    # (w1 as recorded before the decode step had two factors)
    recorded = {"w0": {"decode_fixed_factor": 2.0, "decode_batch_factor": 2.0, "prefill_factor": 1.0,
                       "ttft_offset_s": 0.0, "intervals": 50},
                "w1": {"decode_factor": 2.0, "prefill_factor": 1.0, "ttft_offset_s": 0.0, "intervals": 40}}
    timing = corrected_timing(half, recorded)
    assert timing.decode_step_s(4, 1000) == pytest.approx(profile.decode_step_s(4, 1000))
    # a worker that saw little work (its factors the least certain) counts for as much as it saw
    idle = {"decode_fixed_factor": 8.0, "decode_batch_factor": 8.0, "prefill_factor": 1.0, "ttft_offset_s": 0.0,
            "intervals": 3}
    step = corrected_timing(half, {**recorded, "w2": idle}).decode_step_s(4, 1000)
    assert profile.decode_step_s(4, 1000) < step < 1.1 * profile.decode_step_s(4, 1000)
    kwargs = dict(policy="jsq", workers=2, slo_ttft_s=0.5, slo_atgt_s=ATGT_SLO, engine=ENGINE)
    wrong = simulate_observed(observed, half, **kwargs)
    corrected = simulate_observed(observed, half, timing_profile=timing, **kwargs)
    assert corrected.atgt_median_rel_error < 0.01 < wrong.atgt_median_rel_error
    # the serving path the run measured (the offset, the delay before placement) is the hosts'
    # too: every replayed TTFT carries it
    late = {w: {**c, "ttft_offset_s": 0.03} for w, c in recorded.items()}
    shifted = simulate_observed(observed, half, timing_profile=corrected_timing(half, late), placement_delay_s=0.02,
                                **kwargs)
    assert shifted.ttft_median_ratio > corrected.ttft_median_ratio
    # the schedule is the same, 0.02 s later
    assert shifted.atgt_median_rel_error == pytest.approx(corrected.atgt_median_rel_error, abs=1e-9)
    assert corrected_timing(half, None) is None and corrected_timing(half, {}) is None
    # a baseline's run measured the factors only; the TTFT offset comes from elsewhere
    assert corrected_timing(half, recorded, ttft_offset_s=0.2).serving_overhead_s == pytest.approx(
        half.serving_overhead_s + 0.2)


def test_a_run_is_replayed_on_its_own_corrections_with_the_offset_a_closed_loop_learned(profile):
    """A baseline's run (p2c: no closed loop) measured its engines' factors itself; its TTFT
    offset comes from the runs that learned one; a run that recorded nothing takes everyone's."""
    from placement.evaluation.fidelity import run_timing

    def measured(decode: float, offset_s: float) -> dict:
        return {"decode_factor": decode, "prefill_factor": 1.0, "ttft_offset_s": offset_s, "intervals": 30}

    aladdin = {"placement_closed_loop": {"ttft_share": 1.0}, "placement_latency_corrections": {"w0": measured(1.5, 0.1)}}
    p2c = {"placement_closed_loop": None, "placement_latency_corrections": {"w0": measured(3.0, 0.0)}}
    legacy = {"placement_closed_loop": {"corrections": {"w0": measured(2.0, 0.3)}}}
    rayllm: dict = {}
    runs = [aladdin, p2c, legacy, rayllm]
    step = profile.decode_step_s(4, 1000) - profile.decode.d0_s

    def scaled(summary: dict) -> tuple[float, float]:
        timing = run_timing(profile, summary, runs)
        return ((timing.decode_step_s(4, 1000) - timing.decode.d0_s) / step,
                timing.serving_overhead_s - profile.serving_overhead_s)

    assert scaled(aladdin) == pytest.approx((1.5, 0.1))
    assert scaled(p2c) == pytest.approx((3.0, 0.2))  # the median of 0.1 and 0.3
    assert scaled(legacy) == pytest.approx((2.0, 0.3))
    # the geometric mean of 1.5, 3.0 and 2.0 (equal intervals); the offsets' median of 0.1 and 0.3
    assert scaled(rayllm) == pytest.approx((9.0 ** (1 / 3), 0.2))
    assert run_timing(profile, rayllm, [rayllm]) is None
    # the run's delay before placement is not the engines': the replay places requests that late
    from placement.evaluation.fidelity import recorded_placement_delay_s

    delayed = {**aladdin, "placement_path_delay_s": 0.05}
    assert scaled(delayed) == pytest.approx((1.5, 0.1))
    assert recorded_placement_delay_s(delayed) == 0.05 and recorded_placement_delay_s(rayllm) == 0.0


def test_the_atgt_ratio_by_batch_shows_a_decode_step_that_grows_too_slowly_with_the_batch(profile, simulated):
    """The replay's ATGT sim/real per third of the requests by decoding batch: flat (1.0) when
    the simulated step is the real one, falling from the low to the high third when the
    simulated step grows more slowly with the batch than the real one did."""
    from placement.evaluation.fidelity import decode_batches

    trace, records = simulated
    observed = [ObservedRequest(r.request.arrival_s, t.input_len, t.output_len, True, r.ttft_s,
                                r.atgt_s if t.output_len > 1 else None) for t, r in zip(trace, records)]
    kwargs = dict(policy="jsq", workers=2, slo_ttft_s=0.5, slo_atgt_s=ATGT_SLO, engine=ENGINE)
    same = simulate_observed(observed, profile, **kwargs)
    assert same.atgt_ratio_by_batch == pytest.approx((1.0, 1.0, 1.0), abs=1e-6)
    # the same mean step at the run's typical batch, but flatter: too slow when few decode, too fast when many
    batch = sorted(decode_batches(records).values())
    typical = batch[len(batch) // 2]
    d = profile.decode
    flat = profile.model_copy(update={"decode": d.model_copy(update={
        "d0_s": d.d0_s + 0.75 * d.d1_s_per_seq * typical, "d1_s_per_seq": d.d1_s_per_seq / 4})})
    low, mid, high = simulate_observed(observed, profile, timing_profile=flat, **kwargs).atgt_ratio_by_batch
    assert low > 1.0 > high and low > mid > high
    assert batch[0] >= 1.0 and batch[-1] > typical > batch[0]


def test_a_run_with_recorded_intervals_is_timed_by_one_fit_over_all_of_them(profile):
    """bench-suite's closed-loop series holds every interval of the run: the replay's timing is
    one fit over both workers' intervals (not the live fits' end-of-run factors), leaving out
    those already in the series' first sample (they may predate the run)."""
    import random

    from placement.evaluation.fidelity import recorded_intervals, run_corrections, run_timing
    from placement.latency_correction import EngineWork

    rng = random.Random(0)
    truth = (2.0, 5.0, 3.0)

    def row(number: int, speed: float = 1.0) -> list[float]:
        prompts = rng.randint(0, 3)
        work = EngineWork(decode_iterations=20, decode_sequences=20 * (b := rng.randint(1, 16)),
                          decode_context_tokens=20 * b * 600, prefill_iterations=prompts, prefill_prompts=prompts,
                          prefill_tokens=prompts * (n := rng.randint(50, 800)),
                          prefill_squared_tokens=float(prompts * n * n))
        i = work.interval(profile)
        elapsed = speed * (i.decode_fixed_model_s * truth[0] + i.decode_batch_model_s * truth[1]
                           + i.prefill_model_s * truth[2]) * rng.uniform(0.97, 1.03)
        return [number, elapsed, i.decode_fixed_model_s, i.decode_batch_model_s, i.prefill_model_s]

    rows = {w: [row(n, speed=100.0 if n <= 5 else 1.0) for n in range(1, 201)] for w in ("w0", "w1")}
    series = [{"t_s": 2.0 * (k + 1), "corrections": {w: {"recent_intervals": r[max(0, 5 + 20 * k - 32): 5 + 20 * k]}
                                                     for w, r in rows.items()}} for k in range(10)]
    summary = {"placement_closed_loop": {"ttft_share": 1.0}, "placement_closed_loop_series": series,
               "placement_latency_corrections": {w: {"decode_fixed_factor": 1.0, "decode_batch_factor": 1.0,
                                                     "prefill_factor": 1.0, "ttft_offset_s": 0.1, "intervals": 200,
                                                     "recent_intervals": r[-32:]} for w, r in rows.items()}}
    kept = recorded_intervals(summary)
    assert {w: len(v) for w, v in kept.items()} == {"w0": 195, "w1": 195}  # 1-5 were in the first sample
    (fit,) = run_corrections(summary).values()
    assert fit["intervals"] == 390 and fit["ttft_offset_s"] == pytest.approx(0.1)
    # the prefills are a small part of these intervals' time: their factor is the least certain
    assert [fit["decode_fixed_factor"], fit["decode_batch_factor"]] == pytest.approx(truth[:2], rel=0.05)
    assert fit["prefill_factor"] == pytest.approx(truth[2], rel=0.15)
    timing = run_timing(profile, summary, [summary])
    assert timing.decode.d0_s == pytest.approx(profile.decode.d0_s * truth[0], rel=0.05)
    # without a series, the recorded end-of-run corrections, as before
    assert run_corrections({**summary, "placement_closed_loop_series": None}) == summary["placement_latency_corrections"]
