"""The closed-loop SLO model: prefill-stall interference, reply lengths, attainment feedback,
latency correction, and the loop that ties them to placements (placement/)."""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import astuple, replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.attainment_feedback import MIN_SHARE, AttainmentFeedback, Outcome
from placement.closed_loop import ClosedLoop
from placement.feasibility import check, project, stall_risk
from placement.interference import stall_breaking_lengths
from placement.latency_correction import BusyInterval, EngineWork, LatencyCorrection, scaled_profile
from placement.packing_budget import PackingBudget, edge_miss_rate
from placement.policy import Decision
from placement.reply_lengths import MIN_OBSERVED, ReplyLengths
from placement.simulator.scenario import Scenario, run
from placement.state import Request, WorkerState
from placement.traces import LengthMix, synthetic
from predictors.latency import load_profile_family

PROFILE = load_profile_family("llama-2-7b-a100").profile(1)


def _request(rid, input_len=100, mean=20.0, upper=None, arrival=0.0, slo_atgt=0.05) -> Request:
    return Request(id=str(rid), arrival_s=arrival, input_len=input_len, pred_mean=mean, pred_upper=upper or 2 * mean,
                   slo_ttft_s=1.0, slo_atgt_s=slo_atgt)


def _atgt(length: int, elapsed: float, decoded: int, step: float, stall: float) -> float:
    """The ATGT of a reply of `length` tokens that has decoded `decoded` in `elapsed` s and
    runs the rest at `step` per token, plus one stall."""
    return (elapsed + (length - 1 - decoded) * step + stall) / (length - 1)


@settings(max_examples=300, deadline=None)
@given(st.floats(0, 5), st.integers(0, 200), st.floats(0.001, 0.05), st.floats(0.005, 0.2), st.floats(0.0, 1.0),
       st.integers(2, 600))
def test_stall_breaks_exactly_the_lengths_between_its_bounds(elapsed, decoded, step, budget, stall, length):
    if length <= decoded + 1:
        length = decoded + 2  # still running: more tokens to come
    lo, hi = stall_breaking_lengths(elapsed, decoded, step, budget, stall)
    without = _atgt(length, elapsed, decoded, step, 0.0) <= budget * (1 + 1e-9)
    with_stall = _atgt(length, elapsed, decoded, step, stall) <= budget * (1 + 1e-9)
    if budget <= step:
        assert math.isinf(lo) and math.isinf(hi)
        return
    if lo + 1e-6 <= length < hi - 1e-6:
        assert without and not with_stall
    elif length >= hi + 1e-6:
        assert with_stall
    elif length < lo - 1e-6:
        assert not without


def test_reply_lengths_are_the_empirical_conditional_frequencies():
    rng = np.random.default_rng(3)
    lengths = np.maximum(1, rng.lognormal(3.0, 1.0, 2000).round())
    replies = ReplyLengths.from_lengths(lengths)
    mean = lengths.mean()
    for survived, lo, hi in [(1, 2, 6), (5, 6, 20), (40, 10, 80), (3, 50, 40)]:
        alive = lengths > survived
        expected = ((lengths >= max(lo, survived)) & (lengths < hi) & alive).sum() / alive.sum() if hi > lo else 0.0
        assert replies.p_end_between(mean, survived, lo, hi) == pytest.approx(expected)
    # past every reply of the sample: uniform on (g, 1.5 g]
    longest = float(lengths.max())
    assert replies.p_end_between(mean, longest, longest, longest * 1.25) == pytest.approx(0.5, abs=0.01)


def test_observed_replies_replace_the_prior():
    replies = ReplyLengths()  # log-normal prior around the prediction
    assert replies.p_end_between(100.0, 1.0, 2.0, 50.0) > 0.2
    for _ in range(MIN_OBSERVED):
        replies.observe(100.0, 300)  # every reply is 3x its prediction
    assert replies.p_end_between(100.0, 1.0, 2.0, 50.0) == 0.0
    assert replies.p_end_between(100.0, 1.0, 250.0, 350.0) == 1.0


def test_a_long_prompt_breaks_a_fresh_short_reply_but_not_a_long_one_far_along():
    budget = PackingBudget.fixed_shares(1.0, replies=ReplyLengths.from_lengths([2, 3, 4, 5, 8, 10, 20, 40, 100, 400]))
    fresh, seasoned = WorkerState("fresh", PROFILE), WorkerState("seasoned", PROFILE)
    fresh.admit(_request("a", mean=50.0), now_s=0.0)
    fresh.start_decode("a", now_s=0.0)
    seasoned.admit(_request("b", mean=50.0), now_s=0.0)
    seasoned.start_decode("b", now_s=0.0)
    seasoned.advance(200)  # 200 tokens at 10 ms: far ahead of a 50 ms budget
    now = 2.0
    stall = PROFILE.prefill_time_s([2000])  # ~0.14 s
    step = PROFILE.decode_step_s(2, 400)
    assert stall_risk(fresh, stall, step, 0.0, budget) > 0.1
    assert stall_risk(fresh, 0.001, step, 0.0, budget) == 0.0  # a tiny prefill breaks nothing
    assert stall_risk(seasoned, stall, step, now, budget) == 0.0
    newcomer = _request("new", input_len=2000, arrival=0.0)
    assert not check(fresh, newcomer, 0.0, budget).stall_ok
    assert check(fresh, newcomer, 0.0, PackingBudget.fixed_shares(1.0)).stall_ok  # without the model


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2000), st.floats(1.0, 400.0), st.integers(0, 300), st.booleans(),
                          st.sampled_from([0.02, 0.03, 0.05, 0.1])), min_size=1, max_size=12),
       st.floats(0.001, 0.5), st.floats(0.0, 3.0), st.floats(0.001, 0.06), st.floats(0.0, 0.05), st.floats(0.0, 1.0))
def test_the_stall_risk_over_a_range_of_steps_is_below_the_risk_at_each_of_them(residents, stall, now, step_lo, width,
                                                                               at):
    """`stall_risk(..., step_hi_s=)` is what lets admission reject a worker without projecting
    its peak step: it must never exceed the exact risk at any step in the range."""
    budget = PackingBudget.fixed_shares(1.0, replies=ReplyLengths.from_lengths([2, 3, 5, 8, 13, 20, 40, 100, 400]))
    worker = WorkerState("w", PROFILE)
    for i, (input_len, mean, decoded, started, slo) in enumerate(residents):
        worker.admit(_request(i, input_len=input_len, mean=mean, slo_atgt=slo), now_s=0.0)
        if started:
            worker.start_decode(str(i), now_s=0.0)
    worker.advance(max(d for _, _, d, _, _ in residents))
    step_hi = step_lo + width
    floor = stall_risk(worker, stall, step_lo, now, budget, step_hi_s=step_hi)
    exact = stall_risk(worker, stall, step_lo + at * width, now, budget)
    assert floor <= exact + 1e-12
    # stopping once past a limit answers "above the limit?" as the whole sum does
    for limit in (0.0, 0.00125, exact / 2, exact):
        partial = stall_risk(worker, stall, step_lo + at * width, now, budget, stop_above=limit)
        assert (partial > limit) == (exact > limit)
        assert partial == exact or partial > limit
    # the low end aladdin takes, the step now with the newcomer, is at most the projected peak
    new = _request("new", input_len=int(stall * 4000) + 1, mean=30.0)
    step_now = PROFILE.decode_step_s(worker.resident_sequences + new.sequences,
                                     worker.context_tokens + worker.queued_prompt_tokens + new.prompt_tokens_all)
    assert step_now <= project(worker, new).peak_step_s * (1 + 1e-12)


def test_the_share_is_where_a_p_quantile_of_recent_promises_would_have_met():
    budget = PackingBudget()
    feedback = AttainmentFeedback(budget)
    p = edge_miss_rate(0.99) / 2
    rng = random.Random(0)
    # a model that under-predicts by 25 % at the edge: promises take 1.25 x their budget, +-5 %
    for _ in range(int(40 / p)):
        share = budget.atgt_share
        feedback.observe(Outcome(None, share * 1.25 * rng.uniform(0.95, 1.05), atgt_share=share))
    assert budget.atgt_share == pytest.approx(1 / 1.25 / 1.05, rel=0.02)  # the tail of the error
    assert budget.ttft_share == 1.0  # never promised, never moved
    # once promises keep well within their SLO the share comes back as the window moves on
    for _ in range(int(20 / p)):
        feedback.observe(Outcome(0.5, 0.5, atgt_share=budget.atgt_share))
    assert budget.atgt_share == 1.0


def test_a_burst_of_misses_moves_the_share_by_its_part_of_the_window():
    budget = PackingBudget()
    feedback = AttainmentFeedback(budget)
    for _ in range(100):
        feedback.observe(Outcome(0.8, 0.8))
    assert budget.atgt_share == 1.0  # fewer than p x window misses: unknown promises count as met
    for _ in range(200):  # a burst: many requests at twice their SLO
        feedback.observe(Outcome(2.0, 2.0))
    assert budget.atgt_share == pytest.approx(0.5) and budget.ttft_share == pytest.approx(0.5)
    assert feedback.misses == {"ttft": 200, "atgt": 200}
    for _ in range(20_000):  # TTFTs 10 % over their budget, as packed (latency in proportion to it)
        feedback.observe(Outcome(1.1 * budget.ttft_share, 0.3, ttft_share=budget.ttft_share,
                                 atgt_share=budget.atgt_share))
    assert budget.ttft_share == pytest.approx(1 / 1.1, rel=0.05) and budget.atgt_share == 1.0
    fixed = PackingBudget.fixed_shares(0.7)
    AttainmentFeedback(fixed).observe(Outcome(3.0, 3.0))
    assert fixed.atgt_share == 0.7


def test_shares_stay_within_bounds():
    budget = PackingBudget()
    feedback = AttainmentFeedback(budget)
    for _ in range(10_000):
        feedback.observe(Outcome(50.0, 0.0))  # hopeless TTFTs; one-token replies (ATGT 0)
    assert budget.ttft_share == MIN_SHARE and budget.atgt_share == 1.0


def _decode_work(sequences: int, iterations: int = 10) -> EngineWork:
    return EngineWork(decode_iterations=iterations, decode_sequences=sequences * iterations,
                      decode_context_tokens=sequences * iterations * 500)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.5, 4.0), st.floats(0.3, 12.0), st.floats(0.5, 8.0), st.integers(0, 1000))
def test_correction_recovers_the_factors_of_a_slower_or_faster_host(fixed_factor, batch_over_fixed, prefill_over_fixed,
                                                                     seed):
    """A host whose decode step grows with the batch faster (up to 12x, as the CPU engines' did:
    BENCHMARKS.md "two decode factors") or slower than the profile's, and whose prefills are
    slower or faster (the CPU engines': 2-7x their fixed part's): the fit recovers all three
    factors from heartbeat-like intervals (up to 0.25 s of mixed work at varying batch sizes)."""
    batch_factor, prefill_factor = fixed_factor * batch_over_fixed, fixed_factor * prefill_over_fixed
    rng = random.Random(seed)
    correction = LatencyCorrection()
    factors = (fixed_factor, batch_factor, prefill_factor)

    def true_time(interval: BusyInterval) -> float:
        model = (interval.decode_fixed_model_s, interval.decode_batch_model_s, interval.prefill_model_s)
        return sum(m * f for m, f in zip(model, factors))

    def heartbeat() -> BusyInterval:
        step = _decode_work(rng.randint(1, 32), 1).interval(PROFILE)
        prefill = rng.choice([0.0, rng.uniform(0, 0.05)])
        iterations = int(max(0.0, rng.uniform(0, 0.25) - prefill * prefill_factor) / true_time(step))
        return replace(_decode_work(rng.randint(1, 32), iterations).interval(PROFILE), prefill_model_s=prefill)

    for _ in range(400):
        interval = heartbeat()
        elapsed = true_time(interval) * rng.uniform(0.97, 1.03)
        if elapsed > 0:
            correction.observe("w", replace(interval, elapsed_s=elapsed))
    for _ in range(3):  # outliers (a stalled host for a moment) move it little
        correction.observe("w", BusyInterval(5.0, 0.04, 0.01, 0.0))
    c = correction.of("w")
    # what placement needs: the time of the host's mix of work predicted within the noise
    errors = []
    for interval in (heartbeat() for _ in range(200)):
        if true_time(interval) > 0:
            fitted = (interval.decode_fixed_model_s * c.decode_fixed_factor + interval.prefill_model_s * c.prefill_factor
                      + interval.decode_batch_model_s * c.decode_batch_factor)
            errors.append(abs(fitted / true_time(interval) - 1))
    assert statistics.median(errors) < 0.02 and max(errors) < 0.1
    assert c.factors() == pytest.approx(factors, rel=0.1)
    corrected = correction.profile_for("w", PROFILE)
    for batch in (1, 4, 32):
        truth = PROFILE.decode.d0_s * fixed_factor + (PROFILE.decode_step_s(batch, 500 * batch) - PROFILE.decode.d0_s) * batch_factor
        assert corrected.decode_step_s(batch, 500 * batch) == pytest.approx(truth, rel=0.06)
    assert corrected.kv == PROFILE.kv


def test_a_drifting_host_gets_a_short_memory_and_a_steady_one_keeps_the_long_one() -> None:
    """A host whose speed moves by half every few seconds of busy time (as the 2-core VM's
    engines beside the client): the fit with a short memory predicts its next interval better,
    and the correction switches to it; on a steady noisy host it keeps the longest."""
    from placement.latency_correction import MEMORIES_S, WorkerCorrection

    rng = random.Random(3)
    drifting, steady, long_only = WorkerCorrection(), WorkerCorrection(), WorkerCorrection((max(MEMORIES_S),))
    for i in range(600):
        interval = _decode_work(rng.randint(1, 32), 10).interval(PROFILE)
        speed = 2.0 * (1.5 + 0.5 * math.sin(i / 12))  # busy time 2x-4x the profile, a period of ~30 s
        drifted = replace(interval, elapsed_s=interval.decode_model_s * speed * rng.uniform(0.97, 1.03))
        drifting.observe(drifted)
        long_only.observe(drifted)
        steady.observe(replace(interval, elapsed_s=interval.decode_model_s * 3.0 * rng.uniform(0.95, 1.05)))
    assert drifting.memory_s == min(MEMORIES_S)
    assert drifting.relative_error < 0.7 * long_only.relative_error
    assert steady.memory_s == max(MEMORIES_S)
    with pytest.raises(ValueError, match="memory"):
        WorkerCorrection(())


def test_one_batch_size_cannot_tell_the_decode_factors_apart_and_they_stay_one():
    correction = LatencyCorrection()
    interval = _decode_work(8).interval(PROFILE)
    for _ in range(200):
        correction.observe("w", replace(interval, elapsed_s=3 * interval.decode_model_s))
    c = correction.of("w")
    assert c.decode_fixed_factor == pytest.approx(3.0, rel=0.02)
    assert c.decode_batch_factor == pytest.approx(3.0, rel=0.02)


def test_a_factor_at_its_bound_leaves_the_others_fitted_given_it():
    """Intervals that want a negative fixed part (the step's whole time grows with the batch,
    and more): the fixed factor is held at its bound and the others are the least-squares fit
    given it, not the values fitted beside the negative one."""
    from placement.latency_correction import MAX_FACTOR, _bounded_solve

    a = np.array([[2.0, 1.5, 0.2], [1.5, 2.0, 0.1], [0.2, 0.1, 1.0]])
    b = a @ np.array([-1.0, 6.0, 2.0])
    factors = _bounded_solve(a.tolist(), b.tolist())
    assert factors[0] == pytest.approx(1 / MAX_FACTOR)
    rest = np.linalg.solve(a[1:, 1:], b[1:] - a[1:, 0] * factors[0])
    assert factors[1:] == pytest.approx(rest.tolist())
    assert factors[1] < 5.5  # clipped alone, the fixed factor would have left it at 6
    assert _bounded_solve(a.tolist(), (a @ np.array([1.0, 2.0, 3.0])).tolist()) == pytest.approx([1.0, 2.0, 3.0])


def test_the_models_error_is_measured_before_each_correction_and_falls_as_it_learns():
    correction = LatencyCorrection()
    interval = _decode_work(4).interval(PROFILE)
    slow = replace(interval, elapsed_s=3 * interval.decode_model_s)  # a host 3x slower than profiled
    correction.observe("w", slow)
    assert correction.of("w").relative_error == pytest.approx(2 / 3)  # the profile predicted 1/3 of it
    for _ in range(300):
        correction.observe("w", slow)
    assert correction.of("w").relative_error < 0.02
    # the last intervals are kept as they came, numbered, for offline study
    from placement.latency_correction import RECENT_INTERVALS

    rows = correction.of("w").recent_rows()
    assert len(rows) == RECENT_INTERVALS and rows[-1] == [301, *astuple(slow)]


def test_a_term_never_exercised_takes_the_hosts_level():
    correction = LatencyCorrection()
    for _ in range(200):
        correction.observe("w", BusyInterval(0.03, 0.006, 0.004, 0.0))  # decode 3x slower, no prefills
    c = correction.of("w")
    assert c.factors() == pytest.approx((3.0, 3.0, 3.0), rel=0.02)
    assert correction.profile_for("other", PROFILE) is PROFILE
    assert scaled_profile(PROFILE) == PROFILE


def test_overcommits_void_the_atgt_promises_of_their_worker_s_residents():
    loop = ClosedLoop(PackingBudget())
    worker = WorkerState("w", PROFILE)
    for rid, decision in (("kept", Decision(worker, True)), ("lost", Decision(worker, True, ttft_lost=True))):
        worker.admit(_request(rid), now_s=0.0)
        loop.placed(worker.residents[rid].request, worker, decision, 0.0)
    lost = loop.finished("lost", 2.0, 0.01, 20)
    assert (lost.ttft_ratio, lost.atgt_ratio) == (None, pytest.approx(0.2))  # its TTFT was never promised
    worker.admit(_request("squeezed"), now_s=0.0)
    loop.placed(worker.residents["squeezed"].request, worker, Decision(worker, False), 0.0)
    kept = loop.finished("kept", 0.1, 0.2, 20)
    assert kept.atgt_ratio is None  # a miss that is not the model's
    # the TTFT against the corrected model's prediction for it (the offset learned 2 s late
    # from "lost", which it re-predicts with); met: within its SLO
    assert kept.ttft_ratio is not None and kept.ttft_missed is False
    squeezed = loop.finished("squeezed", 0.1, 0.2, 20)
    assert (squeezed.ttft_ratio, squeezed.atgt_ratio) == (None, None)
    assert loop.finished("unknown", 0.1, 0.2, 20) is None
    # a placement at its last chance (the stall test relaxed) keeps its own promises and voids
    # those of the residents it may stall; it is no overcommit for the scaler
    for rid in ("resident", "last"):
        worker.admit(_request(rid), now_s=0.0)
        loop.placed(worker.residents[rid].request, worker, Decision(worker, True, risked=rid == "last"), 0.0)
    assert loop.overcommitted == 1  # "squeezed" alone
    assert loop.finished("resident", 0.1, 0.2, 20).atgt_ratio is None
    assert loop.finished("last", 0.1, 0.2, 20).atgt_ratio == pytest.approx(4.0)


def test_the_ttft_share_absorbs_the_corrected_models_error_not_the_slos():
    loop = ClosedLoop(PackingBudget())
    worker = WorkerState("w", PROFILE)
    rng = random.Random(1)
    for i in range(3000):
        worker.admit(_request(i, input_len=500), now_s=0.0)
        loop.placed(worker.residents[str(i)].request, worker, Decision(worker, True), 0.0)
        worker.remove(str(i))
        predicted = PROFILE.ttft_s(500)
        # every TTFT 0.1-0.5 s over the model's 37 ms, within the 1 s SLO: the offset takes the
        # mean delay, the share the spread around it as a delay at the edge (+0.2 s: 1 / 1.2),
        # not as a ratio (up to 3.7x the prediction, which would squeeze the share to its floor)
        loop.finished(str(i), predicted + rng.uniform(0.1, 0.5), 0.01, 20)
    offset = loop.correction.of("w").ttft_offset_s
    assert offset == pytest.approx(0.3, rel=0.2)
    assert 0.8 < loop.budget.ttft_share < 0.87 and loop.feedback.misses["ttft"] == 0


def test_simulated_workers_slower_than_their_profile_are_learned():
    trace = synthetic(600, 6.0, lengths=LengthMix(800, 0.5, 60, 1.0), seed=2)
    scenario = Scenario.fitted(trace, PROFILE, slo_ttft_s=1.0, slo_atgt_s=0.05)
    slow = replace(scenario, timing_profile=scaled_profile(PROFILE, decode_fixed_factor=1.6, decode_batch_factor=2.5,
                                                           prefill_factor=2.0))
    from placement.simulator.cluster import Cluster
    from placement.simulator.scenario import cluster_parts, sim_config

    parts = cluster_parts(slow, "aladdin")
    result = Cluster(**parts, config=sim_config(slow, 2)).run()
    for c in parts["loop"].correction.workers.values():
        assert c.factors() == pytest.approx((1.6, 2.5, 2.0), rel=0.05)
    # the same run with a fixed budget still learns the correction (it is part of the loop)
    assert result.summary.finished == len(trace)
    assert run(slow, "jsq", 2).summary.finished == len(trace)


def test_a_live_cluster_closes_the_loop_from_reports_and_ingress_timings():
    from placement.live import LiveCluster, RequestTiming, RunningRequest, WorkerReport
    from placement.policies import AladdinPolicy

    budget = PackingBudget()
    cluster = LiveCluster(PROFILE, AladdinPolicy(budget=budget, on_infeasible="least-violation"), loop=ClosedLoop(budget))
    item = RunningRequest("r1", arrival_s=0.0, input_len=500, pred_mean=20.0, pred_upper=40.0,
                          slo_ttft_s=1.0, slo_atgt_s=0.05)
    assert cluster.place(item.to_request(), ["w0"], 0.0).feasible
    # the engine ran 10 decode steps of 4 sequences over 8,000 context tokens, 3x the profile's time
    work = EngineWork(decode_iterations=10, decode_sequences=40, decode_context_tokens=80_000)
    work = replace(work, busy_s=3 * work.interval(PROFILE).decode_model_s)
    running = (replace(item, generated=5, first_token_s=0.2),)
    for t in range(40):
        cluster.report(WorkerReport("w0", running=running, work=work), now_s=0.5 + t * 0.25)
    worker = cluster.workers["w0"]
    assert worker.residents["r1"].decode_started_s == 0.2
    assert cluster.loop.correction.of("w0").factors()[:2] == pytest.approx((3.0, 3.0), rel=0.02)
    assert worker.profile.decode_step_s(4, 8000) == pytest.approx(3 * PROFILE.decode_step_s(4, 8000), rel=0.03)
    feedback = cluster.loop.feedback
    cluster.observe([RequestTiming("r1", ttft_s=0.2, atgt_s=0.5, output_tokens=30)])  # a promised ATGT missed
    assert feedback.misses == {"ttft": 0, "atgt": 1} and feedback.counted == 1


def test_a_stall_too_small_to_break_a_whole_length_breaks_nothing():
    # a 3 ms prefill against 48 ms of slack a token: only a reply between 1 and 1.06 tokens
    # long would break, and there is no such length
    replies = ReplyLengths()
    assert replies.p_end_between(10.0, 1.0, 1.0, 1.06) == 0.0
    assert replies.p_end_between(10.0, 1.0, 1.0, 2.5) > 0.0  # 2-token replies would


def test_a_resized_and_corrected_worker_keeps_its_state_across_heartbeats():
    from placement.live import LiveCluster, RunningRequest, WorkerReport
    from placement.policies import AladdinPolicy

    budget = PackingBudget()
    cluster = LiveCluster(PROFILE, AladdinPolicy(budget=budget), loop=ClosedLoop(budget))
    item = RunningRequest("r", arrival_s=0.0, input_len=100, pred_mean=20.0, pred_upper=40.0, slo_ttft_s=1.0, slo_atgt_s=0.05)
    cluster.place(item.to_request(), ["w"], 0.0)
    # a capacity that is no whole number of the profile's blocks, and work 2x slower than profiled
    work = EngineWork(decode_iterations=10, decode_sequences=10, decode_context_tokens=1000)
    work = replace(work, busy_s=2 * work.interval(PROFILE).decode_model_s)
    states = set()
    for t in range(5):
        running = (replace(item, generated=1 + t, first_token_s=0.1),)
        cluster.report(WorkerReport("w", running=running, kv_capacity_tokens=4000, work=work), now_s=0.2 + t * 0.25)
        states.add(id(cluster.workers["w"]))
    worker = cluster.workers["w"]
    assert len(states) == 1 and worker.kv_capacity_tokens == 4000 // PROFILE.kv.block_size * PROFILE.kv.block_size
    assert worker.profile.decode_step_s(2, 100) == pytest.approx(2 * PROFILE.decode_step_s(2, 100), rel=0.03)
    assert worker.residents["r"].decode_from_step is not None


def test_a_request_no_empty_worker_fits_is_unfit_and_not_demand():
    from placement.policies import AladdinPolicy

    budget = PackingBudget(ttft_share=0.2, target_attainment=0.99)
    policy = AladdinPolicy(budget=budget, on_infeasible="least-violation")
    loop = ClosedLoop(budget)
    busy, empty = WorkerState("busy", PROFILE), WorkerState("empty", PROFILE)
    busy.admit(_request("resident", input_len=100), now_s=0.0)
    # its own prefill alone is within the SLO but over the budget's 0.2 s: no worker fits it,
    # not even the empty one, so more workers would not either
    long = _request("long", input_len=3000)
    assert 0.2 < PROFILE.ttft_s(3000) < 1.0
    decision = policy.decide(long, [busy, empty], 0.0)
    assert decision.worker is not None and not decision.feasible and decision.unfit
    loop.placed(long, decision.worker, decision, 0.0)
    assert (loop.placements, loop.overcommitted) == (1, 0)
    # with every worker busy the same request is short of room: that is demand
    empty.admit(_request("other", input_len=100), now_s=0.0)
    decision = policy.decide(replace(long, id="long2"), [busy, empty], 0.0)
    assert not decision.feasible and not decision.unfit
    loop.placed(replace(long, id="long2"), decision.worker, decision, 0.0)
    assert (loop.placements, loop.overcommitted) == (2, 1)


def test_engine_work_adds_every_field():
    from dataclasses import astuple

    a, b = EngineWork(*range(1, 9)), EngineWork(*range(10, 18))
    assert astuple(a + b) == tuple(x + y for x, y in zip(astuple(a), astuple(b), strict=True))


def test_a_term_never_exercised_leaves_the_bounded_fit_defined():
    """Exact intervals (the simulator's) that never ran a prefill and want a negative fixed part:
    with the fixed factor held at its bound, what is left is singular in the prefill term; the
    fit stays finite and inside its bounds."""
    from placement.latency_correction import MAX_FACTOR, _bounded_solve

    a = [[1.0, 2.0, 0.0], [2.0, 4.5, 0.0], [0.0, 0.0, 0.0]]
    b = [-1.0, 1.0, 0.0]
    factors = _bounded_solve(a, b)
    assert all(math.isfinite(k) and 1 / MAX_FACTOR <= k <= MAX_FACTOR for k in factors)
