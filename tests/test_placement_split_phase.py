import math

import pytest

from placement.simulator.scenario import Scenario, run
from placement.simulator.split_phase import KVLink, LeastTTFTPrefill, decode_only_view, run_split
from placement.simulator.worker_engine import WorkerEngine
from placement.state import Request, WorkerState
from placement.traces import LengthMix, synthetic
from predictors.latency import load_profile_family

PROFILE = load_profile_family("llama-2-7b-a100").profile(1)
LONG_PROMPTS = LengthMix(input_mean=3000, input_cv=0.3, output_mean=150, output_cv=0.5)


def _scenario(n=300, rate=4.0, *, lengths=LengthMix(), profile=PROFILE, length_model="oracle", seed=0):
    trace = synthetic(n, rate, lengths=lengths, seed=seed)
    return Scenario.fitted(
        trace, profile, slo_ttft_s=1.0, slo_atgt_s=0.05, length_model=length_model, seed=seed
    )


@pytest.mark.parametrize("policy", ["aladdin", "rr"])
def test_every_request_finishes_once_with_all_its_tokens(policy):
    result = run_split(_scenario(), policy, 1, 2)
    assert result.summary.finished == result.summary.requests == 300
    assert len({r.request.id for r in result.records}) == 300
    assert all(r.produced == r.output_len for r in result.records)
    # a reply of more than one token was decoded on a decode worker, a one-token reply never left
    for r in result.records:
        assert r.worker_id.startswith("d" if r.output_len > 1 else "p")


def test_ttft_covers_the_prefill_and_the_link_time_is_in_the_second_token():
    link = KVLink(gbps=10.0, latency_s=0.005)  # slow, so the transfer is visible
    result = run_split(_scenario(), "aladdin", 1, 2, link=link)
    transfers = 0
    for r in result.records:
        n = r.request.input_len
        assert r.ttft_s >= PROFILE.prefill_time_s([n]) - 1e-12
        if r.output_len == 1:
            assert math.isnan(r.kv_arrived_s)
            continue
        transfers += 1
        assert r.transfer_s == pytest.approx(0.005 + n * PROFILE.kv.bytes_per_token * 8 / 10e9)
        assert r.kv_arrived_s >= r.first_token_s + r.transfer_s - 1e-12
        # after the KV arrives each remaining token takes at least a lone decode step
        lone_steps = sum(PROFILE.decode_step_s(1, n + k) for k in range(r.output_len - 1))
        assert r.finish_s >= r.kv_arrived_s + lone_steps - 1e-9
    assert result.kv_transfer.transfers == transfers > 0
    assert result.kv_transfer.mean_s == pytest.approx(
        sum(r.transfer_s for r in result.records if r.output_len > 1) / transfers
    )


def test_a_slower_link_delays_decoding_but_not_the_first_token():
    fast = run_split(_scenario(), "rr", 1, 2, link=KVLink(gbps=400.0))
    slow = run_split(_scenario(), "rr", 1, 2, link=KVLink(gbps=4.0))
    assert [r.first_token_s for r in fast.records] == [r.first_token_s for r in slow.records]
    assert slow.summary.atgt_p50_s > fast.summary.atgt_p50_s


def test_decode_workers_never_hold_more_kv_blocks_than_they_have(monkeypatch):
    small = PROFILE.model_copy(update={"kv": PROFILE.kv.model_copy(update={"num_blocks": 700})})  # 11,200 tokens
    seen = {"decode_runs": 0}
    original = WorkerEngine.start_next

    def checked_start_next(self, now):
        end = original(self, now)
        if self.state.id.startswith("d") and end is not None and self.running:
            seen["decode_runs"] += 1
            last_step = self.state.steps + self._steps
            assert self.blocks.blocks_at(last_step) + self._reserved_blocks <= self.num_blocks
        return end

    monkeypatch.setattr(WorkerEngine, "start_next", checked_start_next)
    # rr ignores KV, so the decode workers fill up and must hold transferred requests back
    result = run_split(_scenario(200, 8.0, profile=small), "rr", 2, 1)
    assert seen["decode_runs"] > 0
    assert result.summary.finished == 200
    assert result.summary.preemptions > 0  # the cache did run full


def test_same_seed_same_run():
    def records(seed):
        result = run_split(_scenario(length_model="noisy", seed=seed), "aladdin", 1, 2)
        return [(r.first_token_s, r.kv_arrived_s, r.finish_s, r.worker_id) for r in result.records]

    assert records(3) == records(3)
    assert records(3) != records(4)


def test_gpu_seconds_count_both_pools():
    result = run_split(_scenario(), "aladdin", 2, 3)
    pools = result.pools
    assert (pools["prefill"].workers, pools["decode"].workers) == (2, 3)
    assert result.summary.gpu_seconds == pytest.approx(pools["prefill"].gpu_seconds + pools["decode"].gpu_seconds)
    assert pools["decode"].gpu_seconds == pytest.approx(1.5 * pools["prefill"].gpu_seconds)
    assert result.summary.workers_peak == 5


def test_decode_workers_are_seen_without_prefill_cost():
    view = decode_only_view(PROFILE)
    assert view.prefill_time_s([4000]) == 0.0
    assert view.decode_step_s(8, 10_000) == PROFILE.decode_step_s(8, 10_000)
    assert view.kv == PROFILE.kv


def test_prefill_placement_picks_the_least_queued_prefill():
    busy, idle = WorkerState("p0", PROFILE), WorkerState("p1", PROFILE)
    busy.admit(Request("a", 0.0, 2000, 10.0, 20.0, 1.0, 0.05))
    new = Request("b", 0.0, 100, 10.0, 20.0, 1.0, 0.05)
    assert LeastTTFTPrefill().choose(new, [busy, idle], 0.0) is idle
    idle.accepting = False
    assert LeastTTFTPrefill().choose(new, [busy, idle], 0.0) is busy


def test_split_beats_colocated_on_atgt_under_heavy_long_prompts():
    # long prompts at a high rate: colocated workers stall their decodes behind prefills;
    # decode workers never do, at the same 4 GPUs
    scenario = _scenario(600, 8.0, lengths=LONG_PROMPTS, seed=1)
    colocated = run(scenario, "jsq", 4).summary
    split = run_split(scenario, "jsq", 2, 2).summary
    assert split.finished == colocated.finished == 600
    assert split.atgt_p99_s < colocated.atgt_p99_s
    assert split.atgt_p50_s < colocated.atgt_p50_s


def test_split_phase_rejects_empty_pools_and_dead_links():
    with pytest.raises(ValueError):
        run_split(_scenario(10), "rr", 0, 1)
    with pytest.raises(ValueError):
        KVLink(gbps=0.0)
