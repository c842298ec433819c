"""Per-node heartbeat relays: the node's tick (pure), and a relay in front of the real placement
actor through Ray (one call carries several workers' reports; a restarted actor is found
again)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from placement.live import WorkerReport
from serve_app.scheduler.heartbeat_relay import next_tick_s, tick_phase_s

KV_TOKENS = 4096


@given(now_s=st.floats(0, 2e9), period_s=st.floats(0.01, 10), share=st.floats(0, 0.999))
def test_the_next_tick_is_within_one_period_and_on_the_phase(now_s: float, period_s: float, share: float) -> None:
    phase_s = share * period_s
    tick = next_tick_s(now_s, period_s, phase_s)
    assert now_s < tick <= now_s + period_s * (1 + 1e-9)
    cycles = (tick - phase_s) / period_s
    assert abs(cycles - round(cycles)) < 1e-6 * max(1.0, cycles)


def test_a_node_keeps_its_phase_and_nodes_spread_over_the_period() -> None:
    phases = [tick_phase_s(f"node-{i}", 0.25) for i in range(200)]
    assert phases[0] == tick_phase_s("node-0", 0.25)
    assert all(0 <= p < 0.25 for p in phases)
    # spread: every tenth of the period holds some of 200 nodes
    assert {int(p / 0.025) for p in phases} == set(range(10))


@pytest.mark.serving
def test_a_relay_forwards_several_reports_in_one_call_and_finds_a_restarted_actor(ray_cluster) -> None:
    import time

    import ray

    from serve_app.scheduler.heartbeat_relay import get_heartbeat_relay
    from serve_app.scheduler.placement_actor import get_placement_actor

    app = f"relay-{uuid.uuid4().hex[:8]}"
    config = {"placement": {"profile_family": "tiny-cpu", "heartbeat_relay": True}}
    node_id = ray.get_runtime_context().get_node_id()
    relay = get_heartbeat_relay(app, config, 0, node_id)
    actor = get_placement_actor(app, config)
    try:
        replies = ray.get([relay.heartbeat.remote(WorkerReport(f"w{i}", kv_capacity_tokens=KV_TOKENS))
                           for i in range(6)], timeout=60)
        assert all(isinstance(reply, dict) for reply in replies)
        stats = ray.get(relay.stats.remote(), timeout=60)
        assert stats["reports"] == 6 and stats["calls"] < 6  # reports of one tick go together
        assert set(ray.get(actor.stats.remote(), timeout=60)["residents"]) == {f"w{i}" for i in range(6)}

        ray.kill(actor, no_restart=False)  # restarted empty: rebuilt from the next reports
        deadline = time.monotonic() + 60
        while True:
            try:
                ray.get(relay.heartbeat.remote(WorkerReport("w9", kv_capacity_tokens=KV_TOKENS)), timeout=10)
                break
            except (ray.exceptions.RayActorError, TimeoutError, ray.exceptions.GetTimeoutError):
                assert time.monotonic() < deadline, "the relay never reached the restarted actor"
                time.sleep(0.2)
        assert "w9" in ray.get(actor.stats.remote(), timeout=60)["residents"]
    finally:
        ray.kill(relay)
        ray.kill(actor)
