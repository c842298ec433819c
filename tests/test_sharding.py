"""Sharded placement: stable shard assignment, the router's shard order, and decisions that
stay feasible by the exact check."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.feasibility import check
from placement.packing_budget import PackingBudget
from placement.policies import AladdinPolicy, make_policies
from placement.sharding import DemandTable, ShardedPolicy, shard_of, shard_order, summarize, worker_room
from placement.state import WorkerState
from tests.test_placement_policies import _random_cluster, _request


def test_a_workers_shard_is_a_function_of_its_id_alone():
    ids = [f"replica-{i}" for i in range(400)]
    shards = {w: shard_of(w, 4) for w in ids}
    assert set(shards.values()) == {0, 1, 2, 3}
    assert min(Counter(shards.values()).values()) > 60  # roughly even
    assert all(shard_of(w, 4) == shards[w] for w in reversed(ids))  # no state, no order
    assert all(shard_of(w, 1) == 0 for w in ids)
    with pytest.raises(ValueError):
        shard_of("w", 0)


def test_room_is_one_when_idle_and_falls_as_residents_come():
    cluster = _random_cluster(3, 6)
    idle = WorkerState("idle", cluster[0].profile)
    assert worker_room(idle) == 1.0
    for worker in cluster:
        assert 0.0 <= worker_room(worker) <= 1.0
    busy = WorkerState("busy", cluster[0].profile)
    for i in range(4):
        busy.admit(_request(f"b{i}", 200, 50, 100))
        busy.start_decode(f"b{i}")
    assert worker_room(busy) < 1.0
    summary = summarize(1, [busy, idle])
    assert (summary.shard, summary.workers, summary.room) == (1, 2, 1.0)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 12), st.integers(2, 4), st.integers(1, 600), st.floats(1, 400))
def test_a_sharded_aladdin_places_only_where_feasible(seed, n, shards, input_len, upper):
    cluster = _random_cluster(seed, n)
    budget = PackingBudget.fixed_shares(1.0)
    policy = ShardedPolicy(lambda k: AladdinPolicy(budget=budget), shards, seed=seed)
    request = _request("new", input_len, upper / 2, upper)
    decision = policy.decide(request, cluster, 0.0)
    if decision.worker is not None:
        assert decision.feasible == check(decision.worker, request, 0.0, budget).feasible
    if not decision.feasible and shards == 2:  # both shards were asked: nothing fits anywhere
        assert not any(check(w, request, 0.0, budget).feasible for w in cluster)


def test_the_shard_with_room_is_asked_first_and_a_full_one_passes_the_request_on():
    profile = _random_cluster(0, 1)[0].profile
    ids = [f"w{i}" for i in range(40)]
    by_shard = {k: [w for w in ids if shard_of(w, 2) == k] for k in (0, 1)}
    full, roomy = WorkerState(by_shard[0][0], profile), WorkerState(by_shard[1][0], profile)
    for i in range(40):  # fill shard 0's only worker past its KV
        full.admit(_request(f"f{i}", 300, 100, 200))
    request = _request("new", 100, 20, 40)
    assert not check(full, request, 0.0).feasible and check(roomy, request, 0.0).feasible
    asked = []

    class Recording(AladdinPolicy):
        def decide(self, request, workers, now_s):
            asked.append(workers[0].id)
            return super().decide(request, workers, now_s)

    policy = ShardedPolicy(lambda k: Recording(), 2)
    assert policy.decide(request, [full, roomy], 0.0).worker is roomy
    assert asked == [roomy.id]  # more room: asked first, and it fitted
    # summaries still stale from when the full shard looked idle: asked first, it passes the
    # request on
    asked.clear()
    stale = ShardedPolicy(lambda k: Recording(), 2, refresh_s=1e9)
    stale.decide(request, [WorkerState(full.id, profile), WorkerState(roomy.id, profile)], 0.0)
    asked.clear()
    assert stale.decide(request, [full, roomy], 1.0).worker is roomy
    assert asked == [full.id, roomy.id]


def test_make_policies_shards_every_policy_it_builds():
    parts = make_policies("aladdin", shards=3, admission=True)
    assert isinstance(parts.policy, ShardedPolicy) and isinstance(parts.wait_policy, ShardedPolicy)
    assert parts.policy.budget is parts.loop.budget and parts.wait_policy.budget is parts.loop.budget
    assert isinstance(make_policies("jsq", shards=2).policy, ShardedPolicy)
    assert not isinstance(make_policies("aladdin").policy, ShardedPolicy)
    with pytest.raises(ValueError):
        make_policies("aladdin", shards=0)


def test_shard_order_draws_two_populated_shards_the_roomier_first() -> None:
    rng = random.Random(0)
    rooms = [0.1, 0.9, 0.5, 0.0]
    for _ in range(50):
        order = shard_order(rooms, [0, 1, 2], rng)
        assert len(order) == 2 and set(order) <= {0, 1, 2} and rooms[order[0]] >= rooms[order[1]]
    assert shard_order(rooms, [3], rng) == [3]


def test_the_demand_table_sums_the_other_shards_fresh_reports() -> None:
    table = DemandTable(stale_s=15.0)
    table.report(0, workers=3, held=2, now_s=0.0)
    table.report(1, workers=5, held=4, now_s=10.0)
    assert table.elsewhere(0, 10.0) == (5, 4) and table.elsewhere(1, 10.0) == (3, 2)
    assert table.elsewhere(2, 10.0) == (8, 6)
    assert table.elsewhere(1, 20.0) == (0, 0)  # shard 0 silent past stale_s: no longer counted


def test_one_shard_decides_exactly_as_before() -> None:
    """K = 1 (the default) is the unsharded placement: the live router's call with
    `feasible_only=False` (what PlacementShards makes with one shard) decides as `place` always
    did, request by request, on a seeded stream that fills the workers past feasibility."""
    import hashlib

    from placement.controller import ControllerSettings, PlacementController
    from placement.live import RunningRequest, WorkerReport
    from predictors.latency.families import load_profile_family

    def digest(feasible_only: bool | None) -> str:
        ctl = PlacementController(ControllerSettings(
            policy="aladdin", profile=load_profile_family("tiny-cpu").profile(1), slo_ttft_s=5.0, slo_atgt_s=0.05))
        workers = [f"w{i}" for i in range(4)]
        for w in workers:
            ctl.heartbeat(WorkerReport(w, kv_capacity_tokens=8192), 0.0)
        rng, out = random.Random(7), hashlib.sha256()
        for i in range(120):
            size = rng.randint(50, 1500)
            request = RunningRequest(f"r{i}", i * 0.01, size, size / 2, size, 5.0, 0.05)
            args = (request, workers, i * 0.01) + (() if feasible_only is None else (feasible_only,))
            routing = ctl.place(*args)
            out.update(f"{routing.worker_id}:{routing.outcome};".encode())
        return out.hexdigest()

    assert digest(None) == digest(False)
    assert make_policies("aladdin", shards=1).policy.__class__ is AladdinPolicy  # the simulator's too
