"""The simulator's autoscaling rules (`placement/simulator/autoscale.py`) against a fake cluster."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.closed_loop import ClosedLoop
from placement.packing_budget import PackingBudget
from placement.simulator.autoscale import (
    DEFAULT_TARGET_ONGOING_REQUESTS,
    PlannerScaler,
    QueueLengthScaler,
    make_autoscaler,
)
from placement.simulator.metrics import RequestRecord
from placement.simulator.scenario import Scenario, run
from placement.state import Request
from placement.traces import synthetic
from predictors.latency import load_profile_family
from predictors.latency.profile import WorkerProfile

PROFILE = load_profile_family("llama-2-7b-a100").profile(1)


@dataclass
class FakeCluster:
    """A `ClusterView` whose arrivals, load and worker count a test sets directly."""

    now_s: float = 0.0
    profile: WorkerProfile = PROFILE
    arrival_window_s: float = 60.0
    workers: int = 4
    ongoing: int = 0
    records: list[RequestRecord] = field(default_factory=list)
    scaled: list[tuple[float, int]] = field(default_factory=list)

    @property
    def active_workers(self) -> int:
        return self.workers

    def ongoing_requests(self) -> int:
        return self.ongoing

    def recent_arrivals(self) -> list[RequestRecord]:
        return [r for r in self.records if r.request.arrival_s >= self.now_s - self.arrival_window_s]

    def scale_to(self, workers: int) -> None:
        self.scaled.append((self.now_s, workers))
        self.workers = workers

    def arrive(self, t_s: float, rate_per_s: float, output_len: int = 200, finished: bool = True) -> None:
        """Requests at `rate_per_s` from the last arrival (or 0) up to `t_s`."""
        start = self.records[-1].request.arrival_s if self.records else 0.0
        for k in range(1, int((t_s - start) * rate_per_s) + 1):
            request = Request(id=str(len(self.records)), arrival_s=start + k / rate_per_s, input_len=300,
                              pred_mean=256, pred_upper=768, slo_ttft_s=1.0, slo_atgt_s=0.05)
            record = RequestRecord(request, output_len)
            if finished:
                record.finish_s = request.arrival_s + 1.0
            self.records.append(record)


def _planner_workers(rate_per_s: float, output_len: int = 200, **options) -> int:
    """What a planner tick asks for on a full window of steady arrivals."""
    cluster = FakeCluster(now_s=120.0)
    cluster.arrive(120.0, rate_per_s, output_len)
    target = PlannerScaler(**options).target(cluster)
    assert target is not None
    return target


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 40), st.floats(0.5, 30.0), st.integers(20, 2000), st.booleans(),
    st.lists(st.integers(1, 5), min_size=1, max_size=5),
)
def test_planner_never_scales_down_before_its_window_is_full(start, rate, output_len, finished, gaps):
    cluster = FakeCluster(workers=start)
    scaler = PlannerScaler()
    t = 0.0
    for gap in gaps:
        t += 10.0 * gap
        if t >= cluster.arrival_window_s:
            break
        cluster.now_s = t
        cluster.arrive(t, rate, output_len, finished)
        before = cluster.workers
        scaler.tick(cluster)
        assert cluster.workers >= before


def test_planner_scales_down_only_after_its_delay_and_to_the_recent_peak():
    cluster = FakeCluster(workers=1)
    scaler = PlannerScaler(downscale_delay_s=120.0)
    busy = _planner_workers(20.0)
    quiet = _planner_workers(2.0)
    assert busy > quiet
    for t in range(10, 130, 10):  # a busy first two minutes: up at once
        cluster.now_s = float(t)
        cluster.arrive(t, 20.0)
        scaler.tick(cluster)
    assert cluster.workers == busy
    for t in range(130, 400, 10):  # then quiet: the busy wishes hold the count for 120 s
        cluster.now_s = float(t)
        cluster.arrive(t, 2.0)
        scaler.tick(cluster)
        if t < 120 + 120:
            assert cluster.workers == busy, t
    assert cluster.workers == quiet
    assert all(w <= before for (_, w), before in zip(cluster.scaled[1:], [w for _, w in cluster.scaled]))


def test_planner_counts_replies_still_in_flight_by_their_estimates():
    # a young window where only short replies finished: the long unfinished ones count at their
    # estimate (256) rather than not at all
    finished_only = FakeCluster(now_s=30.0)
    finished_only.arrive(30.0, 80.0, output_len=20)
    with_unfinished = FakeCluster(now_s=30.0)
    with_unfinished.arrive(15.0, 80.0, output_len=20)
    with_unfinished.arrive(30.0, 80.0, output_len=5000, finished=False)
    scaler = PlannerScaler()
    assert scaler.target(with_unfinished) > scaler.target(finished_only)


def test_planner_holds_the_requests_in_flight():
    cluster = FakeCluster(now_s=120.0)
    cluster.arrive(120.0, 2.0)
    steady = PlannerScaler().target(cluster)
    cluster.ongoing = 2000  # a backlog far above what the arrival rate keeps in flight
    assert PlannerScaler().target(cluster) > steady


def test_planner_plans_for_the_atgt_budget_it_is_given():
    tight, loose = ClosedLoop(PackingBudget.fixed_shares(0.6)), ClosedLoop(PackingBudget.fixed_shares(1.0))
    assert _planner_workers(40.0, 600, loop=tight) > _planner_workers(40.0, 600, loop=loose)  # decode-bound


def test_scenario_gives_the_planner_aladdins_budget():
    scenario = Scenario.fitted(synthetic(300, 20.0, seed=1), PROFILE, slo_ttft_s=1.0, slo_atgt_s=0.05,
                               length_model="oracle")
    runs = {
        margin: run(scenario, "aladdin", 1, policy_options={"atgt_margin": margin}, autoscale="planner").summary
        for margin in (1.0, 0.5)
    }
    assert runs[0.5].workers_peak > runs[1.0].workers_peak


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 5000), st.integers(1, 50), st.floats(1.0, 64.0))
def test_queue_length_rule_asks_for_ongoing_over_target(ongoing, workers, target):
    cluster = FakeCluster(workers=workers, ongoing=ongoing)
    scaler = QueueLengthScaler(target_ongoing_requests=target, upscale_delay_s=0.0, downscale_delay_s=0.0)
    scaler.tick(cluster)
    assert cluster.workers == min(1024, max(1, math.ceil(ongoing / target)))


def test_queue_length_rule_waits_its_delays():
    cluster = FakeCluster(workers=2, ongoing=10 * DEFAULT_TARGET_ONGOING_REQUESTS)
    scaler = QueueLengthScaler()
    for t in (0.0, 10.0, 20.0):
        cluster.now_s = t
        scaler.tick(cluster)
        assert cluster.workers == 2
    cluster.now_s = 30.0
    scaler.tick(cluster)
    assert cluster.workers == 10
    cluster.ongoing = 0
    for t in range(40, 640, 10):
        cluster.now_s = float(t)
        scaler.tick(cluster)
        assert cluster.workers == 10
    cluster.now_s = 640.0
    scaler.tick(cluster)
    assert cluster.workers == 1


def test_make_autoscaler_rejects_unknown_modes():
    assert isinstance(make_autoscaler("planner", headroom=0.2), PlannerScaler)
    with pytest.raises(ValueError, match="planner, queue-length"):
        make_autoscaler("cpu")


def test_overcommits_beyond_the_edge_rate_raise_the_floor_by_their_share():
    from placement.planning.worker_estimate import overload_floor

    assert overload_floor(10, 1000, 1, 0.99) == 0  # 0.1 %: within the edge miss rate, no floor
    assert overload_floor(10, 1000, 100, 0.99) == 11  # 10 % found no room: 10 % more workers
    assert overload_floor(10, 0, 0, 0.99) == 0


def test_the_planner_scaler_reacts_to_placements_that_found_no_room():
    cluster = FakeCluster(now_s=120.0, workers=2)
    cluster.arrive(120.0, 2.0)
    loop = ClosedLoop(PackingBudget())
    scaler = PlannerScaler(loop=loop)
    steady = scaler.target(cluster)
    loop.placements, loop.overcommitted = 200, 100  # half of the last period's found no room
    assert scaler.target(cluster) >= max(steady, 3)
    assert scaler.target(cluster) == steady  # nothing new since: back to the plan
