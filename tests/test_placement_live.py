"""LiveCluster (placement state kept from worker reports), the arrival window and the
heartbeat's worker estimate."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.planning.arrival_window import ArrivalWindow
from placement.live import LiveCluster, RunningRequest, WorkerReport, with_kv_capacity
from placement.planning.planner import MAX_WORKERS
from placement.policies.registry import make_policy
from placement.planning.worker_estimate import estimate_workers, scale_target
from predictors.latency.families import load_profile_family

PROFILE = load_profile_family("llama-2-7b-a100").profile(1)


def _item(rid: str, input_len: int = 100, mean: float = 50, upper: float = 100, generated: int = 0,
          arrival: float = 0.0) -> RunningRequest:
    return RunningRequest(rid, arrival, input_len, mean, upper, 1.0, 0.05, generated)


def _cluster(policy: str = "jsq") -> LiveCluster:
    return LiveCluster(PROFILE, make_policy(policy))


def test_place_admits_on_the_chosen_candidate_only() -> None:
    cluster = _cluster("rr")
    first = cluster.place(_item("a").to_request(), ["w0", "w1"], 0.0).worker.id
    second = cluster.place(_item("b").to_request(), ["w0", "w1"], 0.0).worker.id
    assert {first, second} == {"w0", "w1"}
    assert cluster.location("a") == first and "a" in cluster.workers[first].residents
    only = cluster.place(_item("c").to_request(), ["w1"], 0.0)
    assert only.worker.id == "w1" and only.feasible


def test_replacing_a_request_moves_it() -> None:
    cluster = _cluster("rr")
    cluster.place(_item("a").to_request(), ["w0"], 0.0)
    cluster.place(_item("a").to_request(), ["w1"], 0.1)
    assert cluster.location("a") == "w1"
    assert "a" not in cluster.workers["w0"].residents


def test_report_tracks_decode_progress_and_finishes() -> None:
    cluster = _cluster()
    cluster.place(_item("a").to_request(), ["w0"], 0.0)
    worker = cluster.workers["w0"]
    assert worker.queued_prefill_count == 1
    cluster.report(WorkerReport("w0", running=(_item("a", generated=1),)), 0.1)
    assert worker.decode_count == 1 and worker.generated("a") == 0
    cluster.report(WorkerReport("w0", running=(_item("a", generated=11),)), 0.2)
    assert worker.generated("a") == 10
    cluster.report(WorkerReport("w0", finished=(("a", 30),)), 0.3)
    assert not worker.residents and cluster.location("a") is None


def test_a_request_for_two_samples_is_two_sequences_and_reports_their_sum() -> None:
    cluster = _cluster()
    two = RunningRequest("a", 0.0, 100, 50, 100, 1.0, 0.05, sequences=2)
    cluster.place(two.to_request(), ["w0"], 0.0)
    worker = cluster.workers["w0"]
    assert worker.queued_prefill_count == 2 and worker.kv_final_tokens == 2 * (100 + 100)
    # the worker counts the tokens of both sequences: 2 then 22 are 1 and 11 each
    cluster.report(WorkerReport("w0", running=(RunningRequest("a", 0.0, 100, 50, 100, 1.0, 0.05, 2, sequences=2),)), 0.1)
    assert worker.decode_count == 2 and worker.generated("a") == 0
    cluster.report(WorkerReport("w0", full=False, progress=(("a", 22),)), 0.2)
    assert worker.generated("a") == 10 and worker.context_tokens == 2 * (100 + 10)


def test_state_is_rebuilt_from_reports_alone() -> None:
    """A restarted actor knows nothing; one report per worker restores its residents."""
    cluster = _cluster()
    cluster.report(WorkerReport("w0", running=(_item("a", generated=5), _item("b"))), 1.0)
    cluster.report(WorkerReport("w1", running=(_item("c", generated=2),)), 1.0)
    assert set(cluster.workers["w0"].residents) == {"a", "b"}
    assert cluster.workers["w0"].decode_count == 1 and cluster.workers["w0"].queued_prefill_count == 1
    assert cluster.location("c") == "w1"


def test_unreported_request_is_kept_for_the_grace_period_then_dropped() -> None:
    cluster = LiveCluster(PROFILE, make_policy("jsq"), pending_grace_s=5.0)
    cluster.place(_item("a").to_request(), ["w0"], 0.0)
    cluster.report(WorkerReport("w0"), 1.0)  # not yet arrived at the worker
    assert "a" in cluster.workers["w0"].residents
    cluster.report(WorkerReport("w0"), 6.0)  # never arrived: presumed lost
    assert "a" not in cluster.workers["w0"].residents


def test_reported_request_that_stops_being_reported_is_dropped() -> None:
    cluster = _cluster()
    cluster.place(_item("a").to_request(), ["w0"], 0.0)
    cluster.report(WorkerReport("w0", running=(_item("a", generated=3),)), 0.5)
    cluster.report(WorkerReport("w0"), 0.6)  # cancelled on the worker
    assert not cluster.workers["w0"].residents


def test_kv_capacity_from_the_engine_replaces_the_profile() -> None:
    cluster = _cluster()
    cluster.place(_item("a").to_request(), ["w0"], 0.0)
    cluster.report(WorkerReport("w0", running=(_item("a", generated=1),), kv_capacity_tokens=16_000), 0.1)
    worker = cluster.workers["w0"]
    assert worker.kv_capacity_tokens == with_kv_capacity(PROFILE, 16_000).kv.capacity_tokens
    assert "a" in worker.residents and worker.decode_count == 1


def test_forget_drops_workers_and_their_residents() -> None:
    cluster = _cluster()
    cluster.place(_item("a").to_request(), ["w0"], 0.0)
    cluster.forget(["w0"])
    assert "w0" not in cluster.workers and cluster.location("a") is None


def test_overrun_raises_the_estimate() -> None:
    cluster = _cluster()
    cluster.place(_item("a", mean=10, upper=20).to_request(), ["w0"], 0.0)
    cluster.report(WorkerReport("w0", running=(_item("a", mean=10, upper=20, generated=40),)), 1.0)
    request = cluster.workers["w0"].residents["a"].request
    assert request.est_upper > 20 and request.est_mean > 10


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 40)), min_size=1, max_size=30))
def test_aggregates_stay_consistent_under_any_report_sequence(events: list[tuple[int, int]]) -> None:
    """Whatever the reports say, the worker's incremental aggregates match its residents."""
    cluster = _cluster("aladdin")
    for k, (worker, generated) in enumerate(events):
        rid = f"r{k % 7}"
        if generated % 3 == 0:
            cluster.place(_item(rid).to_request(), ["w0", "w1", "w2"], float(k))
        else:
            cluster.report(WorkerReport(f"w{worker}", running=(_item(rid, generated=generated),)), float(k))
    for state in cluster.workers.values():
        residents = state.residents.values()
        assert state.queued_prefill_count == sum(r.decode_from_step is None for r in residents)
        assert state.decode_count == sum(r.decode_from_step is not None for r in residents)
        assert state.kv_final_tokens == sum(r.counted_final_tokens for r in residents)
    locations = [cluster.location(f"r{i}") for i in range(7)]
    for i, where in enumerate(locations):
        held = [wid for wid, s in cluster.workers.items() if f"r{i}" in s.residents]
        assert held == ([where] if where else [])


def test_window_counts_rate_and_uses_true_lengths_once_known() -> None:
    window = ArrivalWindow(window_s=10.0)
    for i in range(20):
        window.add(f"r{i}", i * 0.5, 100, 50.0)
    window.finish("r0", 7)
    workload = window.workload(10.0, 1.0, 0.05)
    assert workload is not None
    assert workload.rate_per_s == pytest.approx(20 / 10.0)
    assert 7.0 in set(workload.output_lens)
    assert window.full(10.0) and not window.full(9.0)
    assert window.rate_per_s(100.0) == 0.0 and len(window) == 0


def test_window_counts_a_request_for_n_samples_as_n_arrivals() -> None:
    single, paired = ArrivalWindow(window_s=10.0), ArrivalWindow(window_s=10.0)
    for i in range(10):
        paired.add(f"r{i}", i * 1.0, 100 + i, 50.0, sequences=2)
        for k in range(2):
            single.add(f"r{i}.{k}", i * 1.0, 100 + i, 50.0)
    paired.finish("r0", 14)  # the tokens of both samples: 7 each
    single.finish("r0.0", 7)
    single.finish("r0.1", 7)
    a, b = paired.workload(10.0, 1.0, 0.05), single.workload(10.0, 1.0, 0.05)
    assert len(paired) == 20 and a.rate_per_s == b.rate_per_s == pytest.approx(2.0)
    for name in ("input_lens", "output_lens", "arrival_s", "cached_lens"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert paired.rate_per_s(100.0) == 0.0 and len(paired) == 0


def test_a_partial_window_counts_the_arrivals_after_the_first() -> None:
    """The first arrival starts the observation: one arrival, however recent, is no rate (a
    heartbeat 1 ms after it once read 1,000 req/s, and at the same instant crashed the planner)."""
    window = ArrivalWindow(window_s=60.0)
    window.add("a", 5.0, 100, 50.0)
    assert window.rate_per_s(5.0) == 0.0 and window.rate_per_s(5.001) == 0.0
    assert estimate_workers(window, PROFILE, 5.0, 1.0, 0.05).workers == 0
    window.add("b", 6.0, 100, 50.0)
    window.add("c", 7.0, 100, 50.0)
    assert window.rate_per_s(9.0) == pytest.approx(2 / 4.0)


def test_a_demand_beyond_the_search_range_is_planned_not_crashed() -> None:
    window = ArrivalWindow(window_s=60.0)
    for i in range(2001):  # 1e8 req/s, more than MAX_WORKERS workers take
        window.add(str(i), i * 1e-8, 500, 200.0)
    estimate = estimate_workers(window, PROFILE, 2000e-8, 1.0, 0.05)
    assert estimate.usable and estimate.workers >= MAX_WORKERS
    assert scale_target(estimate, current=2, min_workers=1, max_workers=8) == 8


def test_estimate_grows_with_rate_and_never_shrinks_on_a_partial_window() -> None:
    estimates = []
    for rate in (1.0, 4.0, 16.0):
        window = ArrivalWindow(window_s=60.0)
        for i, t in enumerate(np.arange(0, 60, 1 / rate)):
            window.add(str(i), float(t), 500, 200.0)
        estimates.append(estimate_workers(window, PROFILE, 60.0, 1.0, 0.05))
    assert [e.workers for e in estimates] == sorted(e.workers for e in estimates)
    assert estimates[-1].workers > estimates[0].workers >= 1
    partial = ArrivalWindow(window_s=60.0)
    partial.add("x", 0.0, 500, 200.0)
    low = estimate_workers(partial, PROFILE, 5.0, 1.0, 0.05)
    assert not low.window_full
    assert scale_target(low, current=6, min_workers=1, max_workers=8) == 6
    full = estimate_workers(partial, PROFILE, 60.0, 1.0, 0.05)
    assert scale_target(full, current=6, min_workers=1, max_workers=8) == max(1, full.workers)


def test_no_arrivals_estimates_zero_and_min_workers_bounds_it() -> None:
    window = ArrivalWindow(window_s=1.0)
    window.add("x", 0.0, 10, 5.0)
    estimate = estimate_workers(window, PROFILE, 100.0, 1.0, 0.05)
    assert estimate.workers == 0 and estimate.window_full
    assert scale_target(estimate, current=3, min_workers=0, max_workers=8) == 0
    assert scale_target(estimate, current=3, min_workers=1, max_workers=8) == 1


def test_in_flight_floor_counts_a_prompt_heavy_backlog_by_what_a_worker_clears() -> None:
    """Long prompts, short replies: few residents per worker, but a worker clears rate x
    TTFT SLO requests of backlog in time, so 9 queued requests are not 9 workers."""
    from placement.planning.worker_estimate import plan_workers
    from placement.planning.planner import Workload

    workload = Workload(1.0, np.array([4000.0]), np.array([8.0]), 1.0, 0.05)
    option, idle = plan_workers(PROFILE, workload, 0.1, 1.0, in_flight=0)
    _, backlog = plan_workers(PROFILE, workload, 0.1, 1.0, in_flight=9)
    prefill_s = PROFILE.prefill_time_s([4000])
    assert option.at_max_rate.residents < 1.0 / prefill_s  # prompts dominate
    assert idle == option.workers
    assert backlog == max(option.workers, int(np.ceil(9 * 1.1 / (1.0 / prefill_s))))
    assert backlog < 9
