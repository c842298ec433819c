"""Feasibility: the projected KV and decode-step peaks against a step-by-step simulation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.feasibility import check, project
from placement.state import PREFILL_WINDOW_S, Request, WorkerState
from predictors.latency import load_profile_family

BASE = load_profile_family("llama-2-7b-a100").profile(1)


def _profile(num_blocks: int):
    return BASE.model_copy(update={"kv": BASE.kv.model_copy(update={"num_blocks": num_blocks})})


def _request(i: int, input_len: int, upper: float, slo_atgt: float = 0.05, slo_ttft: float = 1.0,
             sequences: int = 1) -> Request:
    return Request(
        id=f"r{i}", arrival_s=0.0, input_len=input_len, pred_mean=max(1.0, upper / 2), pred_upper=upper,
        slo_ttft_s=slo_ttft, slo_atgt_s=slo_atgt, sequences=sequences,
    )


# (input length, upper output, share generated, decoding, sequences: OpenAI's n)
residents = st.lists(
    st.tuples(st.integers(1, 400), st.floats(1, 300), st.floats(0, 1), st.booleans(), st.sampled_from([1, 1, 2, 3])),
    max_size=12,
)


def _worker(num_blocks: int, spec) -> WorkerState:
    """A worker whose decoding residents have each generated a fraction of their upper length."""
    worker = WorkerState(id="w", profile=_profile(num_blocks))
    generated = {}
    for i, (input_len, upper, done, decoding, sequences) in enumerate(spec):
        request = _request(i, input_len, upper, sequences=sequences)
        worker.admit(request)
        if decoding:
            generated[request.id] = int(done * request.upper_output_tokens)
    # start the longest-running first, advancing between starts, so each ends at its count
    order = sorted(generated, key=generated.get, reverse=True)
    for rid, after in zip(order, order[1:] + [None]):
        worker.start_decode(rid)
        worker.advance(generated[rid] - (generated[after] if after else 0))
    assert all(worker.generated(rid) == g for rid, g in generated.items())
    return worker


def _simulate(worker: WorkerState, new: Request) -> tuple[int, float]:
    """Step the worker forward with every output exactly `upper_output_tokens` long; the peak
    KV use and the slowest decode step seen (batch = sequences holding KV at that step)."""
    live = []
    for rid, resident in worker.residents.items():
        request = resident.request
        live += [[request.input_len, worker.generated(rid), request.upper_output_tokens]] * request.sequences
    live += [[new.input_len, 0, new.upper_output_tokens]] * new.sequences
    peak_kv, peak_step = 0, 0.0
    while live:
        usage = sum(n + g for n, g, _ in live)
        peak_kv = max(peak_kv, usage)
        peak_step = max(peak_step, worker.profile.decode_step_s(len(live), usage))
        # the step: requests that reached their length leave, the rest gain a token
        live = [[n, g + 1, u] for n, g, u in live if g < u]
    return peak_kv, peak_step


@settings(max_examples=150, deadline=None)
@given(residents, st.integers(1, 400), st.floats(1, 300), st.integers(2, 200), st.integers(1, 3))
def test_projection_matches_a_step_by_step_simulation(spec, input_len, upper, num_blocks, sequences):
    worker = _worker(num_blocks, spec)
    new = _request(99, input_len, upper, sequences=sequences)
    sim_kv, sim_step = _simulate(worker, new)
    projection = project(worker, new)
    assert projection.peak_kv_tokens == sim_kv
    assert math.isclose(projection.peak_step_s, sim_step, rel_tol=1e-12)


@settings(max_examples=150, deadline=None)
@given(residents, st.integers(1, 400), st.floats(1, 300), st.integers(2, 200), st.integers(1, 3))
def test_kv_feasible_never_overflows_when_lengths_are_as_predicted(spec, input_len, upper, num_blocks, sequences):
    worker = _worker(num_blocks, spec)
    new = _request(99, input_len, upper, sequences=sequences)
    fit = check(worker, new, now_s=0.0)
    sim_kv, _ = _simulate(worker, new)
    assert fit.kv_ok == (sim_kv <= worker.kv_capacity_tokens)


def test_overdue_resident_counts_its_current_size_not_a_negative_remainder():
    worker = WorkerState(id="w", profile=_profile(100))
    request = _request(1, 100, 10)
    worker.admit(request)
    worker.start_decode(request.id)
    worker.advance(50)  # 40 tokens past its upper estimate
    assert project(worker).peak_kv_tokens == 150


def test_atgt_uses_the_tightest_slo_of_residents_and_newcomer():
    worker = WorkerState(id="w", profile=BASE)
    worker.admit(_request(1, 100, 50, slo_atgt=0.005))  # tighter than one decode step
    worker.start_decode("r1")
    fit = check(worker, _request(2, 100, 50), now_s=0.0)
    assert fit.kv_ok and not fit.atgt_ok and not fit.feasible
    assert fit.atgt_slo_s == 0.005


def test_ttft_counts_the_wait_already_spent_and_the_queued_prefill():
    worker = WorkerState(id="w", profile=BASE)
    request = _request(1, 2000, 50, slo_ttft=1.0)
    fresh = check(worker, request, now_s=0.0)
    assert fresh.ttft_ok and math.isclose(fresh.ttft_s, BASE.ttft_s(2000))
    assert not check(worker, request, now_s=1.0).ttft_ok  # already waited its whole SLO
    for i in range(2, 30):
        worker.admit(_request(i, 2000, 50))
    assert not check(worker, request, now_s=0.0).ttft_ok


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 300), st.floats(1, 100), st.integers(0, 30)), max_size=40))
def test_added_worker_aggregates_match_a_recount(ops):
    """kv_final_tokens, min_slo_atgt_s and min_upper_end_step under admit / start / advance /
    remove / set_estimate, against a recount from the residents."""
    worker = WorkerState(id="w", profile=BASE)
    for i, (op, input_len, upper, steps) in enumerate(ops):
        rids = list(worker.residents)
        if op == 0 or not rids:
            worker.admit(_request(i, input_len, upper, slo_atgt=0.01 * (1 + i % 3)))
        elif op == 1:
            waiting = [r for r in rids if worker.residents[r].decode_from_step is None]
            if waiting:
                worker.start_decode(waiting[0])
        elif op == 2:
            worker.advance(steps)
        elif op == 3:
            worker.remove(rids[i % len(rids)])
        else:
            worker.set_estimate(rids[i % len(rids)], upper / 2, upper)
        residents = list(worker.residents.values())
        assert worker.kv_final_tokens == sum(r.request.upper_final_tokens for r in residents)
        assert worker.min_slo_atgt_s == min((r.request.slo_atgt_s for r in residents), default=math.inf)
        ends = [r.decode_from_step + r.request.upper_output_tokens for r in residents if r.decode_from_step is not None]
        assert worker.min_upper_end_step == min(ends, default=math.inf)


def test_atgt_counts_the_worker_recent_prefills():
    """Prefills run before decode steps, so a worker that just took many prompts stretches its
    residents' token interval by 1 / (1 - prefill share) even when its decode step is fast."""
    from placement.interference import token_interval_s

    busy, quiet = WorkerState(id="busy", profile=BASE), WorkerState(id="quiet", profile=BASE)
    now_s = 100.0
    for worker, gap_s in ((busy, 0.1), (quiet, 5.0)):  # 20 long prompts in the last 2 s / 100 s
        for i in range(20):
            request = _request(i, 2000, 100)
            worker.admit(request, now_s=now_s - (20 - i) * gap_s)
            worker.start_decode(request.id)
            worker.remove(request.id)  # served: only the prefill load it caused remains
        worker.admit(_request(50, 200, 100, slo_atgt=0.012), now_s=now_s)
        worker.start_decode("r50")
    new = _request(99, 200, 100, slo_atgt=0.012)
    busy_fit, quiet_fit = check(busy, new, now_s), check(quiet, new, now_s)
    assert busy_fit.peak_step_s == quiet_fit.peak_step_s < 0.012  # the same batch, a fast step
    assert busy_fit.prefill_share > 0.2 > quiet_fit.prefill_share
    assert busy_fit.atgt_s == token_interval_s(busy_fit.peak_step_s, busy_fit.prefill_share)
    assert not busy_fit.atgt_ok and quiet_fit.atgt_ok


def test_a_newcomers_prefill_stalls_the_residents_not_its_own_decode():
    """A long prompt's prefill runs before its own first token: on an idle worker it stretches
    no one's token interval, beside a decoding resident it stretches the resident's. (Counted
    against its own ATGT, it had 8k-token prompts refused on idle CPU workers.)"""
    from placement.policies import AladdinPolicy

    now_s = 10.0
    long_prompt = Request(id="long", arrival_s=now_s, input_len=3500, pred_mean=20, pred_upper=40,
                          slo_ttft_s=5.0, slo_atgt_s=1.0)
    idle = WorkerState(id="idle", profile=BASE)
    own_prefill_s = idle.prefill_s(long_prompt)
    alone = check(idle, long_prompt, now_s)
    assert alone.prefill_share == 0.0 and alone.atgt_s == alone.peak_step_s
    # an ATGT SLO the step meets but the step stretched by its own prefill would not
    tight = Request(id="tight", arrival_s=now_s, input_len=3500, pred_mean=20, pred_upper=40, slo_ttft_s=5.0,
                    slo_atgt_s=alone.peak_step_s * (1 + own_prefill_s / PREFILL_WINDOW_S / 2))
    assert check(idle, tight, now_s).feasible
    assert AladdinPolicy().choose(tight, [idle], now_s) is idle

    busy = WorkerState(id="busy", profile=BASE)
    busy.admit(_request(1, 10, 400, slo_atgt=1.0), now_s=now_s)
    busy.start_decode("r1")
    beside = check(busy, long_prompt, now_s)
    assert beside.prefill_share == pytest.approx(busy.prefill_share(now_s, own_prefill_s))
    assert beside.prefill_share > busy.prefill_share(now_s)
