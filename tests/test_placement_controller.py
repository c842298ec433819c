"""The placement controller without Ray: admission verdicts, routing, liveness, the estimate
and the policy factory the simulator shares."""

from __future__ import annotations

from dataclasses import replace

import pytest

from placement.admission import AdmissionLimits
from placement.closed_loop import TIMING_GRACE_S
from placement.controller import STALE_HEARTBEATS, ControllerSettings, PlacementController, ScalingSettings
from placement.latency_correction import EngineWork
from placement.live import RequestTiming, RunningRequest, WorkerReport
from placement.policies.registry import make_policies
from predictors.latency.families import load_profile_family
from predictors.latency.profile import WorkerProfile
from serve_app.config import AppConfig

PROFILE = load_profile_family("tiny-cpu").profile(1)
KV_TOKENS = 4096  # two 1000 + 1000-token requests fill a worker
HEARTBEAT_S = 0.25


def _controller(policy: str = "aladdin", admission: bool = True, **scaling: float) -> PlacementController:
    return PlacementController(ControllerSettings(
        policy=policy, profile=PROFILE, slo_ttft_s=5.0, slo_atgt_s=0.05, heartbeat_s=HEARTBEAT_S,
        admission=AdmissionLimits(max_waiting=4) if admission else None, scaling=ScalingSettings(**scaling),
    ))


def _req(i: int, t: float = 0.0, out: float = 1000.0) -> RunningRequest:
    return RunningRequest(f"r{i}", t, 1000, out, out, 5.0, 0.05)


def _report(worker: str, finished: tuple[str, ...] = (), running: tuple[RunningRequest, ...] = ()) -> WorkerReport:
    return WorkerReport(worker, running=running, finished=tuple((r, 10) for r in finished),
                        kv_capacity_tokens=KV_TOKENS)


def test_admission_queues_then_a_heartbeat_that_frees_room_admits_in_order() -> None:
    ctl = _controller()
    ctl.heartbeat(_report("w0"), 0.0)
    admitted = [ctl.admit(_req(i), 0.0) for i in range(2)]
    assert [v.worker_id for v in admitted] == ["w0", "w0"] and not any(v.queued for v in admitted)
    assert ctl.admit(_req(2), 0.0) is None and ctl.admission_waiting == 1
    ctl.heartbeat(_report("w0", finished=("r0",), running=(_req(1),)), 0.5)
    verdicts = ctl.drain(0.5, reported_only=True)
    assert [(v.request_id, v.worker_id, v.queued) for v in verdicts] == [("r2", "w0", True)]
    routing = ctl.place(_req(2), ["w0", "w1"], 0.6)
    assert (routing.worker_id, routing.outcome) == ("w0", "admitted")
    assert ctl.stats()["outcomes"] == {"admitted": 2, "admitted_after_wait": 1}
    assert ctl.decisions(["r0", "r1", "r2"]) == {"r0": "w0", "r1": "w0", "r2": "w0"}


def test_a_drain_of_reported_workers_tries_only_those_except_once_per_heartbeat_period() -> None:
    ctl = _controller()
    ctl.heartbeat(_report("w0"), 0.0)
    for i in range(2):
        ctl.admit(_req(i), 0.0)
    assert ctl.admit(_req(2), 0.0) is None
    assert ctl.drain(0.0) == []  # everywhere: w0 is full
    ctl.heartbeat(_report("w1"), 0.01)  # an empty worker reports: tried
    assert [v.worker_id for v in ctl.drain(0.01, reported_only=True)] == ["w1"]
    assert ctl.admit(_req(3), 0.01).worker_id == "w1" and ctl.admit(_req(4), 0.01) is None  # all full
    ctl.place(_req(0), ["w1"], 0.02)  # a retried routing moves r0: room on w0, which has not reported
    assert ctl.drain(0.03, reported_only=True) == []
    assert [v.worker_id for v in ctl.drain(0.01 + HEARTBEAT_S, reported_only=True)] == ["w0"]


def test_a_waiting_request_past_its_deadline_is_refused_by_drain() -> None:
    ctl = _controller()
    ctl.heartbeat(_report("w0"), 0.0)
    for i in range(2):
        ctl.admit(_req(i), 0.0)
    assert ctl.admit(_req(2), 0.0) is None
    assert ctl.drain(1.0) == []  # still time
    (verdict,) = ctl.drain(6.0)
    assert verdict.refused and verdict.queued and verdict.outcome == "refused" and verdict.retry_after_s >= 1
    assert ctl.admission_waiting == 0 and not ctl.withdraw("r2")


def test_without_admission_requests_pass_unplaced_and_routing_places_them() -> None:
    ctl = _controller("jsq", admission=False)
    verdict = ctl.admit(_req(0), 0.0)
    assert verdict.worker_id is None and not verdict.refused
    routing = ctl.place(_req(0), ["w0", "w1"], 0.0)
    assert routing.outcome == "placed" and ctl.where("r0")["worker_id"] == routing.worker_id
    assert ctl.stats()["closed_loop"] is None and ctl.closed_loop_snapshot() is None


def test_a_silent_worker_is_forgotten_with_its_residents() -> None:
    ctl = _controller("jsq", admission=False)
    ctl.place(_req(0), ["w1"], 0.0)
    ctl.heartbeat(_report("w1", running=(_req(0),)), 0.0)
    ctl.heartbeat(_report("w0"), 0.5 * STALE_HEARTBEATS * HEARTBEAT_S)
    assert ctl.where("r0") is not None
    result = ctl.heartbeat(_report("w0"), 1.5 * STALE_HEARTBEATS * HEARTBEAT_S)
    assert result.forgotten == ["w1"] and result.workers_held == 1
    assert ctl.where("r0") is None and "w1" not in ctl.stats()["residents"]


def test_a_failed_worker_is_skipped_until_it_reports_again() -> None:
    ctl = _controller("rr", admission=False)
    ctl.place(_req(0), ["w0"], 0.0)
    assert ctl.worker_failed("r0") == "w0" and ctl.worker_failed("r0") is None
    assert {ctl.place(_req(i), ["w0", "w1"], 0.1).worker_id for i in range(1, 5)} == {"w1"}
    assert ctl.place(_req(5), ["w0"], 0.1).worker_id == "w0"  # the only candidate left
    ctl.heartbeat(_report("w0", running=(_req(5),)), 0.2)
    assert {ctl.place(_req(i), ["w0", "w1"], 0.3).worker_id for i in range(6, 10)} == {"w0", "w1"}


def test_the_estimate_is_recomputed_once_a_period_and_its_changes_logged() -> None:
    ctl = _controller("jsq", admission=False, estimate_period_s=5.0, window_s=10.0, min_workers=1, max_workers=3)
    first = ctl.heartbeat(_report("w0"), 0.0)
    assert first.estimated and first.target_workers == 1 and len(ctl.scaling_log) == 1
    for i in range(200):  # a heavy load arrives
        ctl.admit(_req(i, t=i * 0.05), i * 0.05)
    assert not ctl.heartbeat(_report("w0"), 4.0).estimated  # within the period: the old one
    later = ctl.heartbeat(_report("w0"), 11.0)
    assert later.estimated and later.estimate.workers > 1
    assert later.target_workers == min(3, later.estimate.workers)  # bounded by max_workers
    assert ctl.scaling_log[-1]["target_workers"] == later.target_workers
    assert later.reply()["target_workers"] == later.target_workers


def test_aladdin_parts_share_one_budget_and_the_baselines_have_none() -> None:
    parts = make_policies("aladdin", target_attainment=0.95, atgt_margin=0.8, admission=True)
    budget = parts.loop.budget
    assert parts.policy.budget is budget and parts.wait_policy.budget is budget
    assert budget.fixed and budget.atgt_share == 0.8 and budget.target_attainment == 0.95
    assert parts.policy.on_infeasible == "least-violation" and parts.wait_policy.on_infeasible == "wait"
    assert make_policies("aladdin").wait_policy is None and not make_policies("aladdin").loop.budget.fixed
    rr = make_policies("rr")
    assert rr.loop is None and rr.wait_policy is None
    with pytest.raises(ValueError, match="admission is the aladdin"):
        make_policies("jsq", admission=True)


def test_the_serving_config_sets_the_controller() -> None:
    config = AppConfig.from_args({"engine.kind": "sim", "slo.ttft_ms": 800, "placement.policy": "aladdin",
                                  "placement.max_waiting": 7, "scaling.max_workers": 5})
    settings = config.controller_settings()
    assert (settings.policy, settings.slo_ttft_s, settings.token_budget) == ("aladdin", 0.8, None)
    assert settings.admission == AdmissionLimits(7, None) and settings.scaling.max_workers == 5
    assert AppConfig.from_args({"placement.policy": "jsq"}).controller_settings().admission is None


def _report_slow_engine(ctl: PlacementController, slowdown: float, periods: int = 40) -> WorkerProfile:
    """Worker w0 reports `periods` heartbeats of decode work taking `slowdown` x what the
    profile says; returns the fleet profile from before."""
    work = EngineWork(decode_iterations=100, decode_sequences=400, decode_context_tokens=400_000)
    base = ctl.cluster.fleet_profile()
    predicted = work.interval(base).decode_model_s
    for i in range(periods):
        ctl.heartbeat(WorkerReport("w0", kv_capacity_tokens=KV_TOKENS,
                                   work=replace(work, busy_s=slowdown * predicted)), 0.25 * i)
    return base


def test_engine_work_in_heartbeats_corrects_the_worker_and_the_fleet_profile() -> None:
    ctl = _controller()
    base = _report_slow_engine(ctl, 2.0)
    # one batch size throughout, no prefills: nothing tells the terms apart, one factor for all
    assert ctl.corrections()["w0"].factors() == pytest.approx((2.0, 2.0, 2.0), rel=0.1)
    assert ctl.stats()["latency_corrections"]["w0"]["intervals"] > 0
    assert ctl.cluster.fleet_profile().decode.d0_s > base.decode.d0_s


def test_engines_are_measured_against_the_profile_under_a_baseline_policy_too() -> None:
    """p2c reads no latency, but the engines' work still corrects the fleet's profile (the
    planner's estimate, the metrics and `aladdin fidelity` use it); workers keep the profile they
    were given and the correction goes with a worker that is gone."""
    ctl = _controller(policy="p2c", admission=False)
    base = _report_slow_engine(ctl, 3.0)
    assert ctl.stats()["closed_loop"] is None
    corrections = ctl.stats()["latency_corrections"]["w0"]
    assert (corrections["decode_fixed_factor"], corrections["decode_batch_factor"]) == pytest.approx((3.0, 3.0), rel=0.1)
    assert ctl.cluster.fleet_profile().decode.d0_s > base.decode.d0_s
    assert ctl.cluster.workers["w0"].profile.decode == base.decode
    ctl.cluster.forget(["w0"])
    assert ctl.corrections() == {}


def test_a_correction_learned_under_load_does_not_wave_requests_past_admission() -> None:
    """A decode factor learned on loaded workers says every worker, even an idle one, misses a
    20 ms ATGT that the hardware's profile meets (~2 ms a token): the request waits for room
    instead of going ahead at once as if no worker could ever serve it."""
    ctl = _controller()
    _report_slow_engine(ctl, 30.0, periods=80)
    assert min(ctl.corrections()["w0"].factors()[:2]) > 15
    tight = RunningRequest("tight", 20.0, 1000, 100, 100, 5.0, 0.02)
    assert ctl.admit(tight, 20.0) is None and ctl.admission_waiting == 1


def test_observed_timings_count_promises_and_the_snapshot_reports_new_misses_once() -> None:
    ctl = _controller()
    ctl.heartbeat(_report("w0"), 0.0)
    for i in range(2):
        assert ctl.admit(_req(i, out=10.0), 0.0).worker_id == "w0"
    ctl.heartbeat(_report("w0", running=tuple(replace(_req(i, out=10.0), generated=1, first_token_s=0.1)
                                              for i in range(2))), 0.2)
    # r0 met both SLOs; r1 took 3x its ATGT SLO
    ctl.observe([RequestTiming("r0", 0.1, 0.01, 10), RequestTiming("r1", 0.1, 0.15, 10)])
    stats = ctl.stats()["closed_loop"]
    assert stats["promises_counted"] == 2 and stats["promises_missed"] == {"ttft": 0, "atgt": 1}
    assert ctl.closed_loop_snapshot().new_misses == {"ttft": 0, "atgt": 1}
    assert ctl.closed_loop_snapshot().new_misses == {"ttft": 0, "atgt": 0}  # reported once


def test_a_promise_whose_timing_never_comes_goes_a_grace_after_its_worker_reported_it_ended() -> None:
    """Timings come from the ingress; a request whose client went away, or a call that bypassed
    the ingress, never gets one: its promise must not stay until MAX_PROMISES."""
    ctl = _controller()
    ctl.heartbeat(_report("w0"), 0.0)
    for i in range(2):
        assert ctl.admit(_req(i, out=10.0), 0.0).worker_id == "w0"
    ctl.heartbeat(_report("w0", finished=("r0", "r1")), 1.0)
    ctl.observe([RequestTiming("r0", 0.1, 0.01, 10)])  # r1's timing never comes
    assert ctl.stats()["closed_loop"]["promises_pending"] == 1
    ctl.heartbeat(_report("w0"), 1.0 + TIMING_GRACE_S / 2)
    assert ctl.stats()["closed_loop"]["promises_pending"] == 1  # still within the grace
    ctl.heartbeat(_report("w0"), 1.0 + TIMING_GRACE_S + 0.5)
    stats = ctl.stats()["closed_loop"]
    assert stats["promises_pending"] == 0 and stats["promises_counted"] == 1


def test_a_fallback_placement_is_recorded_as_an_overcommit() -> None:
    ctl = _controller()
    ctl.heartbeat(_report("w0"), 0.0)
    ctl.fallback(_req(0), "w0", 0.1)
    assert ctl.where("r0")["worker_id"] == "w0"
    stats = ctl.stats()
    assert stats["outcomes"]["fallback"] == 1 and stats["closed_loop"]["overcommitted"] == 1


def test_a_withdrawn_waiting_request_is_never_admitted() -> None:
    ctl = _controller()
    ctl.heartbeat(_report("w0"), 0.0)
    for i in range(2):
        ctl.admit(_req(i), 0.0)
    assert ctl.admit(_req(2), 0.0) is None
    assert ctl.withdraw("r2") and ctl.admission_waiting == 0
    ctl.heartbeat(_report("w0", finished=("r0", "r1")), 0.5)
    assert ctl.drain(0.5, reported_only=True) == [] and ctl.where("r2") is None


def test_an_abandoned_call_leaves_no_reservation_but_a_reported_request_stays() -> None:
    """A caller that timed out went on without the answer: its unreported placement and its
    place in the admission queue go at once, so the room is free for the next request."""
    ctl = _controller()
    ctl.heartbeat(_report("w0"), 0.0)
    for i in range(2):
        assert ctl.admit(_req(i), 0.0).worker_id == "w0"
    assert ctl.admit(_req(2), 0.0) is None  # w0 is full: r2 waits
    ctl.heartbeat(_report("w0", running=(_req(0),)), 0.25)  # r0 runs there; r1 never arrived
    assert ctl.abandon(["r0", "r1", "r2", "unknown"]) == 2
    assert ctl.where("r0")["worker_id"] == "w0" and ctl.where("r1") is None
    assert ctl.admission_waiting == 0 and ctl.stats()["abandoned"] == 2
    assert ctl.admit(_req(3), 0.3).worker_id == "w0"  # r1's room, free again


def test_a_placement_asked_for_only_where_it_fits_passes_without_a_trace() -> None:
    ctl = _controller(admission=False)
    ctl.heartbeat(_report("w0"), 0.0)
    for i in range(2):
        assert ctl.place(_req(i), ["w0"], 0.0).worker_id == "w0"
    before = ctl.stats()
    routing = ctl.place(_req(2), ["w0"], 0.0, feasible_only=True)  # w0 is full: another shard's turn
    assert (routing.worker_id, routing.outcome) == (None, "passed")
    assert ctl.where("r2") is None and ctl.stats()["outcomes"] == before["outcomes"]
    assert ctl.place(_req(2), ["w0"], 0.0).outcome == "least_violation"  # the last shard places it anyway


def test_the_estimate_plans_for_the_ttft_left_after_the_path_before_placement() -> None:
    """The same arrivals, reaching placement at once or after most of their 5 s TTFT SLO: the
    second plans for what is left of it (more workers for the same prefills, or none at all)."""
    def estimate(delay_s: float):
        ctl = _controller("jsq", admission=False, estimate_period_s=5.0, window_s=10.0, max_workers=64)
        ctl.heartbeat(_report("w0"), 0.0)
        for i in range(200):
            ctl.admit(RunningRequest(f"r{i}", i * 0.05, 3000, 50, 50, 5.0, 0.05), i * 0.05 + delay_s)
        return ctl.heartbeat(_report("w0"), 11.0).estimate

    prompt, rushed = estimate(0.0), estimate(4.99)
    assert prompt.usable and prompt.workers >= 1
    assert not rushed.usable or rushed.workers > prompt.workers


def test_the_target_adds_the_workers_other_shards_need() -> None:
    ctl = _controller(max_workers=16)
    own = ctl.heartbeat(_report("w0"), 0.0).estimate.workers
    ctl.demand_elsewhere = (5, 2)  # what shard 0's table says the other shards need and hold
    assert ctl.heartbeat(_report("w0"), 0.1).target_workers == min(16, max(own + 5, 1 + 2)) >= 5


def test_the_delay_before_placement_is_kept_per_request_at_first_sight() -> None:
    """Admission sees a request first (then routing does not count it again); without
    admission routing does. A clock behind the arrival stamp counts as no delay."""
    from placement.path_delay import PathDelay

    ctl = _controller()
    ctl.heartbeat(_report("w0"), 0.0)
    ctl.admit(_req(1, t=10.0), 10.04)
    ctl.place(_req(1, t=10.0), ["w0"], 10.5)
    ctl.admit(_req(2, t=11.0), 11.02)
    ctl.admit(_req(3, t=12.0), 11.99)
    assert ctl.stats()["path_delay"] == {"p50_s": pytest.approx(0.02), "p90_s": pytest.approx(0.036), "requests": 3}
    plain = _controller(policy="p2c", admission=False)
    plain.heartbeat(_report("w0"), 0.0)
    plain.place(_req(1, t=5.0), ["w0"], 5.1)
    plain.place(_req(1, t=5.0), ["w0"], 5.3)  # a retried routing call
    assert plain.stats()["path_delay"]["p50_s"] == pytest.approx(0.1)
    assert PathDelay().to_dict() == {"p50_s": None, "p90_s": None, "requests": 0}
    recent = PathDelay(recent=2)
    for delay in (5.0, 0.1, 0.3):
        recent.observe(delay)
    assert recent.quantile(1.0) == pytest.approx(0.3)  # the oldest is gone
