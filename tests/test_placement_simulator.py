import json
import math

import numpy as np

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.policies import make_policy
from placement.queue_order import make_queue_order
from placement.simulator import Cluster, EngineOptions, SimConfig, make_length_model
from placement.simulator.kv_blocks import LockstepBlocks
from placement.simulator.length_model import BucketMeanLengths, NoisyLengths
from placement.simulator.worker_engine import WorkerEngine, series_time, steps_until
from placement.traces import TraceRequest, synthetic
from predictors.latency import load_profile_family

PROFILE = load_profile_family("llama-2-7b-a100").profile(1)


def _small_kv(num_blocks: int):
    return PROFILE.model_copy(update={"kv": PROFILE.kv.model_copy(update={"num_blocks": num_blocks})})


def _run(trace, *, profile=PROFILE, workers=1, policy="rr", engine=EngineOptions(), seed=0, lengths="oracle"):
    cluster = Cluster(
        trace,
        profile,
        make_policy(policy, seed=seed),
        make_queue_order("fifo"),
        make_length_model(lengths, seed=seed),
        SimConfig(slo_ttft_s=2.0, slo_atgt_s=0.1, workers=workers, engine=engine),
    )
    return cluster.run()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 64), st.lists(st.tuples(st.integers(1, 5000), st.integers(0, 300)), max_size=25), st.integers(0, 400))
def test_lockstep_blocks_match_a_recount(block_size, members, later):
    blocks = LockstepBlocks(block_size)
    for tokens, step in members:
        blocks.add(tokens, step)
    s = max((step for _, step in members), default=0) + later
    assert blocks.blocks_at(s) == sum(math.ceil((n + s - step) / block_size) for n, step in members)
    assert blocks.tokens_at(s) == sum(n + s - step for n, step in members)


@settings(max_examples=100, deadline=None)
@given(st.floats(1e-4, 0.1), st.floats(0, 1e-4), st.floats(0, 100))
def test_steps_until_is_the_first_boundary_at_or_after(t0, dt, elapsed):
    j = steps_until(t0, dt, elapsed)
    assert series_time(t0, dt, j) >= elapsed
    assert j == 0 or series_time(t0, dt, j - 1) < elapsed


def _step_by_step_decode(input_len: int, steps: int) -> float:
    return sum(PROFILE.decode_step_s(1, input_len + k) for k in range(steps))


def test_a_lone_request_takes_its_prefill_then_its_decode_steps():
    result = _run([TraceRequest(0.0, 300, 50)])
    record = result.records[0]
    assert record.first_token_s == pytest.approx(PROFILE.prefill_time_s([300]))
    assert record.finish_s - record.first_token_s == pytest.approx(_step_by_step_decode(300, 49))


def test_an_arrival_mid_decode_is_prefilled_at_the_next_step_boundary():
    # prefill-first scheduling (vLLM v0; chunked prefill is tested below)
    result = _run([TraceRequest(0.0, 200, 400), TraceRequest(0.5, 100, 10)], engine=EngineOptions(chunked_prefill=False))
    first, second = result.records
    # walk the first request's decode steps one by one to the boundary at or after 0.5 s
    t, k = first.first_token_s, 0
    while t < 0.5:
        t += PROFILE.decode_step_s(1, 200 + k)
        k += 1
    assert second.first_token_s == pytest.approx(t + PROFILE.prefill_time_s([100]))
    # the first request lost exactly the second's prefill and then shared its steps
    assert first.finish_s > first.first_token_s + _step_by_step_decode(200, 399) + PROFILE.prefill_time_s([100])


def _check_conservation(trace, result, profile=PROFILE):
    assert len(result.records) == len(trace)
    assert result.summary.finished == len(trace)
    for item, record in zip(trace, result.records):
        assert record.produced == record.output_len == item.output_len
        assert record.ttft_s >= profile.prefill_time_s([item.input_len]) * (1 - 1e-9)
        assert record.finish_s >= record.first_token_s
        if item.output_len > 1:
            assert record.atgt_s >= profile.decode_step_s(1, item.input_len) * (1 - 1e-9)


def _no_kv_overuse(monkeypatch):
    begin = WorkerEngine._begin_decode

    def checked(self, now, k):
        assert self.blocks.blocks_at(self.state.steps + k) <= self.num_blocks
        return begin(self, now, k)

    monkeypatch.setattr(WorkerEngine, "_begin_decode", checked)


_traces = st.lists(st.tuples(st.floats(0, 20), st.integers(1, 1500), st.integers(1, 400)), min_size=1, max_size=40).map(
    lambda rows: [TraceRequest(t, n, m) for t, n, m in sorted(rows)]
)


@settings(max_examples=25, deadline=None)
@given(_traces, st.sampled_from(["rr", "jsq", "p2c", "aladdin"]), st.booleans(), st.integers(1, 3))
def test_every_request_finishes_once_without_kv_overuse(trace, policy, chunked, workers):
    with pytest.MonkeyPatch.context() as monkeypatch:
        _no_kv_overuse(monkeypatch)
        # 300 blocks x 16 = 4800 tokens: small enough that these traces preempt
        result = _run(trace, profile=_small_kv(300), workers=workers, policy=policy,
                      engine=EngineOptions(chunked_prefill=chunked))
    _check_conservation(trace, result)


def test_kv_pressure_preempts_and_everything_still_finishes(monkeypatch):
    _no_kv_overuse(monkeypatch)
    trace = [TraceRequest(0.001 * i, 1000, 600) for i in range(8)]
    result = _run(trace, profile=_small_kv(400))  # 6400 tokens for 8 x 1600 at the end
    assert result.summary.preemptions > 0
    _check_conservation(trace, result)


def test_chunked_prefill_mixes_prompt_chunks_with_decode_steps():
    trace = [TraceRequest(0.0, 100, 300), TraceRequest(0.3, 4000, 5)]
    budget = 512
    result = _run(trace, engine=EngineOptions(chunked_prefill=True, max_batched_tokens=budget))
    first, second = result.records
    t, k = first.first_token_s, 0
    while t < 0.3:
        t += PROFILE.decode_step_s(1, 100 + k)
        k += 1
    # each iteration: the first request's decode step plus a chunk of budget - 1 prompt tokens
    done = 0
    while done < 4000:
        take = min(budget - 1, 4000 - done)
        t += PROFILE.decode_step_s(1, 100 + k) + PROFILE.prefill.time_from_sums(take, (done + take) ** 2 - done**2, 1)
        done += take
        k += 1
    assert second.first_token_s == pytest.approx(t)
    plain = _run(trace).records[1]
    assert second.ttft_s > plain.ttft_s  # chunks pay the iteration's fixed cost each time


def test_same_seed_same_result():
    trace = synthetic(300, 4.0, seed=2)
    a = _run(trace, workers=3, policy="p2c", seed=5, lengths="noisy")
    b = _run(trace, workers=3, policy="p2c", seed=5, lengths="noisy")
    assert a.summary == b.summary
    assert [r.worker_id for r in a.records] == [r.worker_id for r in b.records]


def test_more_workers_never_hurt_round_robin_here():
    trace = synthetic(400, 8.0, seed=1)
    one, four = _run(trace, workers=1), _run(trace, workers=4)
    assert four.summary.ttft_p99_s < one.summary.ttft_p99_s
    assert four.summary.gpu_seconds > one.summary.gpu_seconds


def test_noisy_lengths_have_the_requested_error_and_coverage():
    model = NoisyLengths(mae_ratio=0.4, coverage=0.8, seed=1)
    preds = [model.predict(10, 200) for _ in range(20000)]
    mae = sum(abs(m - 200) for m, _ in preds) / len(preds) / 200
    coverage = sum(u >= 200 for _, u in preds) / len(preds)
    assert mae == pytest.approx(0.4, rel=0.05)
    assert coverage == pytest.approx(0.8, abs=0.015)


def test_bucket_lengths_learn_per_prompt_bucket():
    model = BucketMeanLengths()
    cold = model.predict(100, 5)
    for n in (10, 20, 30, 40):
        model.observe(100, n)
    model.observe(3000, 500)
    assert model.predict(120, 1) == (25.0, 30.0)  # same log2 bucket as 100
    assert model.predict(5000, 1)[0] == 500.0
    assert model.predict(1, 1) == cold  # nothing learned at or below bucket 1


@pytest.mark.parametrize("rate,slo_ttft_s,slo_atgt_s", [(20.0, 1.0, 0.05), (40.0, 1.5, 0.04)])
def test_planner_worker_count_is_confirmed_within_one_worker(rate, slo_ttft_s, slo_atgt_s):
    """On a steady Poisson stream the planner's fewest workers (no headroom) are those at which
    a load balancer (jsq) reaches the target in the simulator, within one worker."""
    from placement.planning.planner import Workload, plan_tp
    from placement.simulator.scenario import Scenario, run
    from placement.traces import LengthMix

    trace = synthetic(3000, rate, lengths=LengthMix(600, 1.0, 200, 1.0), seed=1)
    scenario = Scenario.fitted(trace, PROFILE, slo_ttft_s=slo_ttft_s, slo_atgt_s=slo_atgt_s, length_model="oracle")
    workload = Workload(
        rate,
        np.array([r.input_len for r in scenario.trace]),
        np.array([r.output_len for r in scenario.trace]),
        slo_ttft_s,
        slo_atgt_s,
        arrival_s=np.array([r.arrival_s for r in scenario.trace]),
    )
    planned = plan_tp(PROFILE, workload, headroom=0.0, token_budget=scenario.engine.chunk_budget(PROFILE)).needed_workers
    simulated = next(w for w in range(1, planned + 3)
                     if run(scenario, "jsq", w).summary.attainment >= workload.target_attainment)
    assert abs(simulated - planned) <= 1


def test_simulate_json_is_the_same_under_the_same_seed(tmp_path, capsys):
    from serve_app.tools.cli import main

    trace = tmp_path / "t.jsonl"
    trace.write_text(
        "\n".join(
            f'{{"timestamp": {int(r.arrival_s * 1000)}, "input_length": {r.input_len}, "output_length": {r.output_len}}}'
            for r in synthetic(300, 6.0, seed=4)
        )
    )
    argv = ["simulate", "--trace", str(trace), "--profile-family", "llama-2-7b-a100", "--workers", "2",
            "--policy", "p2c", "--slo-ttft", "1", "--slo-atgt", "0.05", "--length-model", "noisy", "--seed", "3", "--json"]
    outputs = []
    for _ in range(2):
        assert main(argv) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1]
    assert outputs[0]["requests"] == 300 and 0 <= outputs[0]["attainment"] <= 1


def test_autoscalers_change_the_worker_count_with_load():
    from placement.simulator.scenario import Scenario, run

    busy = synthetic(1500, 30.0, seed=2)
    quiet = [TraceRequest(busy[-1].arrival_s + 60 + 2.0 * i, 300, 50) for i in range(200)]
    scenario = Scenario.fitted(busy + quiet, PROFILE, slo_ttft_s=1.0, slo_atgt_s=0.05, length_model="oracle",
                               warmup_s=20.0)
    for mode, options in [("planner", {}), ("queue-length", {"downscale_delay_s": 60.0})]:
        result = run(scenario, "rr", 1, autoscale=mode, autoscale_options=options)
        gpus = [g for _, g in result.summary.gpu_timeline]
        assert max(gpus) > 1, mode  # scaled up under the burst
        assert gpus[-1] < max(gpus), mode  # and back down when it passed
        assert result.summary.finished == len(scenario.trace)


def test_aladdin_meets_atgt_under_a_steady_stream_of_long_prompts():
    """With exact lengths, the requests Aladdin admits keep their ATGT SLO although prefills
    take a large share of a busy worker's time (the old check counted the decode step alone
    and packed everything onto one worker, whose ATGT then missed)."""
    from placement.simulator.scenario import Scenario, run
    from placement.traces import LengthMix

    trace = synthetic(600, 6.0, lengths=LengthMix(1200, 0.5, 200, 1.0), seed=3)
    scenario = Scenario.fitted(trace, PROFILE, slo_ttft_s=1.0, slo_atgt_s=0.05, length_model="oracle")
    result = run(scenario, "aladdin", 4)
    atgt = np.array([r.atgt_s for r in result.records if r.output_len > 1])
    assert np.mean(atgt <= 0.05 * 1.1) >= 0.98
    assert len({r.worker_id for r in result.records}) >= 2


def test_a_finished_request_leaves_placements_view_at_the_workers_next_report():
    """`EngineOptions.report_period_s`: the engine frees a finished request at once, placement's
    view (the worker's `WorkerState`) at the next multiple of the period, as live heartbeats
    report it; the schedule does not change."""
    from placement.simulator.worker_engine import WorkerEngine
    from placement.simulator.metrics import RequestRecord
    from placement.state import Request, WorkerState

    with pytest.raises(ValueError, match="report_period_s"):
        EngineOptions(report_period_s=-1.0)

    def serve(period: float):
        state = WorkerState(id="w", profile=PROFILE)
        engine = WorkerEngine(state, EngineOptions(report_period_s=period))
        request = Request("r", 0.0, 200, 20, 20, 1.0, 1.0, 20)
        state.admit(request, 0.0)
        record = RequestRecord(request, 20)
        engine.enqueue(record)
        end = engine.start_next(0.0)
        while end is not None:
            engine.complete(end)
            end = engine.start_next(end)
        return state, engine, record

    state, engine, record = serve(0.0)
    assert not state.residents and engine.next_report_s is None
    state, engine, lagged = serve(0.25)
    assert lagged.finish_s == record.finish_s < 0.25  # the engine's schedule is the same
    assert "r" in state.residents and engine.next_report_s == 0.25
    engine.sync(0.2499)
    assert "r" in state.residents
    engine.sync(0.25)
    assert not state.residents and engine.next_report_s is None


def test_with_report_lag_every_request_still_finishes_or_is_refused():
    """A stale view delays room, never loses a request: waiting ones are offered again at each
    report (the `_REPORT` event), with admission too."""
    from dataclasses import replace

    from placement.admission import AdmissionLimits
    from placement.simulator.scenario import Scenario, run
    from placement.traces import LengthMix

    trace = synthetic(400, 120.0, lengths=LengthMix(input_mean=600, output_mean=150), seed=4)
    profile = load_profile_family("tiny-cpu").profile(1)
    for admission, policy in ((None, "jsq"), (None, "aladdin"), (AdmissionLimits(max_waiting=32), "aladdin")):
        base = Scenario.fitted(trace, profile, slo_ttft_s=0.1, slo_atgt_s=0.004, admission=admission)
        lagged = run(replace(base, engine=EngineOptions(report_period_s=0.25)), policy, 2).summary
        assert lagged.finished + lagged.refused == lagged.requests == 400


def test_a_request_waiting_for_room_is_placed_when_the_report_shows_it():
    """Only one 4,000-token request fits the worker's KV: the second waits (Aladdin, "wait"
    when nothing fits), and the room the first leaves shows at the worker's next report, not
    when it finished; the report itself places the second (nothing else happens after it)."""
    profile = _small_kv(300)  # 4,800 tokens
    trace = [TraceRequest(0.0, 3900, 50), TraceRequest(0.001, 3900, 50)]
    cluster = Cluster(trace, profile, make_policy("aladdin", on_infeasible="wait"), make_queue_order("fifo"),
                      make_length_model("oracle"),
                      SimConfig(slo_ttft_s=60.0, slo_atgt_s=1.0, workers=1, engine=EngineOptions(report_period_s=5.0)))
    first, second = cluster.run().records
    assert first.finish_s < 5.0 and second.finish_s > second.first_token_s >= 5.0
