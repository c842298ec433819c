"""SLO-aware admission over a live cluster: admit where a request fits, wait (bounded, in
SLO-ODBS order) while none does, refuse once its TTFT SLO is lost."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

import pytest

from placement.admission import Admission, AdmissionLimits
from placement.packing_budget import edge_miss_rate
from placement.live import LiveCluster, WorkerReport, with_kv_capacity
from placement.policies.registry import make_policy
from placement.queue_order import make_queue_order
from placement.state import Request
from predictors.latency.families import load_profile_family

KV_TOKENS = 4096  # a small cache: two 1000 + 1000-token requests fill a worker


def _admission(workers=("w0",), max_waiting=4, max_wait_s=None) -> Admission:
    profile = with_kv_capacity(load_profile_family("tiny-cpu").profile(1), KV_TOKENS)
    cluster = LiveCluster(profile, make_policy("aladdin", on_infeasible="least-violation"))
    for w in workers:
        cluster.worker(w)
    return Admission(cluster, make_policy("aladdin", on_infeasible="wait"), AdmissionLimits(max_waiting, max_wait_s))


def _req(i, t=0.0, out=1000.0, ttft=5.0) -> Request:
    return Request(id=f"r{i}", arrival_s=t, input_len=1000, pred_mean=out, pred_upper=out, slo_ttft_s=ttft,
                   slo_atgt_s=0.05)


def _finish(adm: Admission, worker: str, request_ids, now):
    adm.cluster.report(WorkerReport(worker, finished=tuple((r, 10) for r in request_ids)), now)


def test_admits_where_it_fits_then_queues_then_refuses_when_full():
    adm = _admission(max_waiting=2)
    placed = [adm.offer(_req(i), 0.0) for i in range(2)]
    assert all(v is not None and v.worker_id == "w0" and not v.refused and not v.queued for v in placed)
    assert adm.offer(_req(2), 0.0) is None and adm.offer(_req(3), 0.0) is None  # the cache is full: wait
    full = adm.offer(_req(4), 0.0)
    assert full.refused and "already waiting" in full.reason and full.retry_after_s >= 1
    assert len(adm.queue) == 2


def test_waiting_requests_leave_in_slo_odbs_order_when_room_frees():
    adm = _admission(max_waiting=8)
    for i in range(2):
        adm.offer(_req(i), 0.0)
    # same arrival and TTFT SLO: SLO-ODBS serves the shorter predicted reply first
    waiting = [_req(10, out=900.0), _req(11, out=300.0), _req(12, out=600.0)]
    assert all(adm.offer(r, 0.0) is None for r in waiting)
    order = make_queue_order("slo-odbs")
    expected = [r.id for r in sorted(waiting, key=lambda r: order.key(r, 0.0))]
    _finish(adm, "w0", ["r0", "r1"], 0.1)
    drained = adm.drain(0.1)
    admitted = [v.request_id for v in drained if not v.refused]
    assert admitted and admitted == expected[: len(admitted)] and all(v.queued for v in drained)
    assert expected[0] == "r11"


def test_a_request_past_its_deadline_is_refused_not_queued_forever():
    adm = _admission(max_waiting=8, max_wait_s=0.5)
    for i in range(2):
        adm.offer(_req(i), 0.0)
    assert adm.offer(_req(5), 0.0) is None
    assert adm.drain(0.4) == []
    [verdict] = adm.drain(0.6)
    assert verdict.refused and verdict.request_id == "r5" and verdict.waited_s == pytest.approx(0.6)
    # the reason says what kept it waiting: the two residents fill the worker's KV
    assert "waited 600 ms" in verdict.reason and "KV" in verdict.reason and "4096 tokens" in verdict.reason
    late = adm.offer(_req(6, t=0.0, ttft=1.0), 2.0)  # arrived 2 s ago with a 1 s TTFT SLO
    assert late.refused and "TTFT" in late.reason


def test_a_request_no_idle_worker_could_serve_in_time_is_placed_not_queued():
    adm = _admission(max_waiting=8)
    for i in range(2):
        adm.offer(_req(i), 0.0)
    hopeless = Request(id="h", arrival_s=0.0, input_len=1000, pred_mean=10, pred_upper=10, slo_ttft_s=5.0,
                       slo_atgt_s=0.0001)  # an ATGT SLO below one decode step
    verdict = adm.offer(hopeless, 0.0)
    assert verdict is not None and verdict.worker_id == "w0" and not verdict.refused  # least violation


def test_no_known_worker_admits_without_a_choice():
    adm = _admission(workers=())
    verdict = adm.offer(_req(0), 0.0)
    assert verdict.worker_id is None and not verdict.refused


def test_withdrawn_requests_leave_the_queue():
    adm = _admission()
    for i in range(3):
        adm.offer(_req(i), 0.0)
    assert adm.withdraw("r2") and not adm.withdraw("r2") and len(adm.queue) == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["offer", "drain", "finish"]), st.floats(0.0, 0.3),
                          st.floats(50.0, 1500.0)), min_size=1, max_size=60),
       st.integers(0, 5))
def test_every_request_gets_exactly_one_verdict_and_the_queue_stays_bounded(ops, max_waiting):
    adm = _admission(workers=("w0", "w1"), max_waiting=max_waiting, max_wait_s=1.0)
    now, offered, verdicts = 0.0, [], {}
    for i, (op, dt, out) in enumerate(ops):
        now += dt
        if op == "offer":
            offered.append(f"r{i}")
            v = adm.offer(_req(i, t=now, out=out), now)
            if v is not None:
                verdicts.setdefault(v.request_id, []).append(v)
        elif op == "drain":
            for v in adm.drain(now):
                verdicts.setdefault(v.request_id, []).append(v)
        else:
            for w in ("w0", "w1"):
                _finish(adm, w, list(adm.cluster.workers[w].residents)[:1], now)
        assert len(adm.queue) <= max_waiting
    for v in adm.drain(now + 10.0):  # everyone still waiting is past max_wait_s by now
        verdicts.setdefault(v.request_id, []).append(v)
    assert sorted(verdicts) == sorted(offered) and all(len(v) == 1 for v in verdicts.values())
    for rid, [v] in verdicts.items():
        assert v.refused or adm.cluster.location(rid) in ("w0", "w1", None)


# ---- the same admission in the simulator -----------------------------------------------


def _overload_scenario(admission, policy_slo_ttft=0.1):
    from placement.simulator.scenario import Scenario
    from placement.traces import LengthMix, synthetic

    trace = synthetic(600, 150.0, lengths=LengthMix(input_mean=600, output_mean=150), seed=4)
    return Scenario.fitted(trace, load_profile_family("tiny-cpu").profile(1), slo_ttft_s=policy_slo_ttft,
                           slo_atgt_s=0.004, admission=admission)


def test_simulated_admission_sheds_an_overload_instead_of_queueing_it():
    from placement.simulator.scenario import run

    without = run(_overload_scenario(None), "aladdin", 2)
    limits = AdmissionLimits(max_waiting=32)
    with_admission = run(_overload_scenario(limits), "aladdin", 2)
    summary = with_admission.summary
    assert summary.refused > 0 and without.summary.refused == 0
    # every request either finished or was refused, never both, none left hanging
    for record in with_admission.records:
        finished = record.finish_s == record.finish_s  # not NaN
        assert finished != record.refused
    assert summary.finished + summary.refused == summary.requests
    # placing everything at once (least violation) breaks nearly every ATGT; what admission
    # lets in meets its SLOs
    admitted_met = sum(r.slos_met for r in with_admission.records if not r.refused)
    assert admitted_met >= 0.9 * summary.finished
    assert summary.attainment > 5 * without.summary.attainment


def test_simulated_admission_is_aladdins_and_not_split_phase():
    from placement.simulator.scenario import run
    from placement.simulator.split_phase import run_split

    with pytest.raises(ValueError, match="aladdin"):
        run(_overload_scenario(AdmissionLimits()), "jsq", 2)
    with pytest.raises(ValueError, match="admission"):
        run_split(_overload_scenario(AdmissionLimits()), "aladdin", 1, 1)


def test_simulated_admission_places_an_unmeetable_request_on_an_idle_worker():
    """A TTFT SLO below what an idle worker takes: past its deadline at arrival, each request
    goes to an idle worker if there is one (the simulator's cluster once lacked that call)."""
    from placement.simulator.scenario import Scenario, run
    from placement.traces import LengthMix, synthetic

    profile = load_profile_family("tiny-cpu").profile(1)
    trace = synthetic(20, 0.5, lengths=LengthMix(input_mean=1500, output_mean=20), seed=1)
    assert profile.ttft_s(1500) > 0.0005
    scenario = Scenario.fitted(trace, profile, slo_ttft_s=0.0005, slo_atgt_s=0.05, admission=AdmissionLimits())
    summary = run(scenario, "aladdin", 2).summary
    assert summary.finished + summary.refused == summary.requests == 20
    assert summary.finished > summary.refused


def test_a_request_reaches_simulated_placement_after_the_paths_delay_its_deadline_from_arrival():
    """`Scenario.placement_delay_s`: placement sees each request that long after its arrival (the
    live path's delay before the placement actor): every TTFT carries it, and admission, whose
    deadlines still run from arrival, sheds more of an overload the later it sees it."""
    from dataclasses import replace

    from placement.simulator.scenario import run

    limits = AdmissionLimits(max_waiting=32)
    prompt = run(_overload_scenario(limits), "aladdin", 2)
    late = run(replace(_overload_scenario(limits), placement_delay_s=0.05), "aladdin", 2)
    assert late.summary.refused > prompt.summary.refused
    assert all(r.ttft_s >= 0.05 for r in late.records if not r.refused)
    # a baseline places the same requests on the same workers, each first token 0.05 s later
    calm = _overload_scenario(None)
    now, later = run(calm, "jsq", 2), run(replace(calm, placement_delay_s=0.05), "jsq", 2)
    assert [r.worker_id for r in later.records] == [r.worker_id for r in now.records]
    assert [r.ttft_s for r in later.records] == pytest.approx([r.ttft_s + 0.05 for r in now.records])
    with pytest.raises(ValueError, match="placement_delay_s"):
        run(replace(calm, placement_delay_s=-1.0), "jsq", 2)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.0, 0.0, 0.3, 1.0]), max_size=3000),
       st.sampled_from([0.9, 0.99, 0.999]))
def test_the_miss_budget_is_what_the_target_leaves_over_the_last_requests(costs, target):
    from placement.admission import MissBudget

    budget = MissBudget(target)
    for cost in costs:
        budget.spend(cost)
    recent = costs[-budget.size:]
    assert budget.allowed == pytest.approx((1 - target) * budget.size)
    assert budget.left == pytest.approx(max(0.0, budget.allowed - sum(recent)), abs=1e-9)


def _stalled_admission(misses_spent: int) -> Admission:
    """A worker whose two residents' short replies a 1,000-token prefill would stall past their
    ATGT (about half a miss expected: the stall test keeps the newcomer waiting), and the
    newcomer, queued at 0 s with a 1 s TTFT SLO; `misses_spent` refusals already counted."""
    from placement.policies.registry import make_policies

    profile = with_kv_capacity(load_profile_family("tiny-cpu").profile(1), 1 << 16)
    parts = make_policies("aladdin", admission=True)
    cluster = LiveCluster(profile, parts.policy, loop=parts.loop)
    cluster.worker("w0")
    adm = Admission(cluster, parts.wait_policy, AdmissionLimits(8), last_chance=parts.last_chance_policy)
    for i in range(2):
        adm.offer(Request(id=f"r{i}", arrival_s=0.0, input_len=100, pred_mean=8, pred_upper=8, slo_ttft_s=5.0,
                          slo_atgt_s=0.006), 0.0)
    for _ in range(misses_spent):
        adm.misses.spend(1.0)
    new = Request(id="new", arrival_s=0.0, input_len=1000, pred_mean=100, pred_upper=100, slo_ttft_s=1.0,
                  slo_atgt_s=0.05)
    assert adm.offer(new, 0.0) is None
    return adm


def test_a_request_held_by_the_stall_test_alone_is_placed_at_its_last_chance():
    adm = _stalled_admission(misses_spent=0)
    assert adm.drain(0.1) == [] and adm.drain(0.5) == []  # drains 0.4 s apart: not due yet
    [verdict] = adm.drain(0.7)  # its deadline (~1 s less its prefill) comes before the next drain
    assert verdict.worker_id == "w0" and verdict.queued and not verdict.refused
    assert adm.misses.left == pytest.approx(adm.misses.allowed - (1 - edge_miss_rate(0.99)))  # what it risked


def test_without_misses_to_spend_the_stall_test_holds_until_the_request_is_refused():
    adm = _stalled_admission(misses_spent=10)  # the target's misses went to refusals
    assert adm.drain(0.1) == adm.drain(0.5) == adm.drain(0.7) == adm.drain(0.95) == []
    [verdict] = adm.drain(1.2)
    assert verdict.refused and "prefill stall breaks 0.48" in verdict.reason


def test_refusals_in_a_burst_are_diagnosed_once_per_period():
    """Each diagnosis costs exact checks: under overload only one refusal in a period gets one."""
    adm = _admission(max_waiting=8, max_wait_s=0.5)
    for i in range(2):
        adm.offer(_req(i), 0.0)
    for i in range(2, 6):
        assert adm.offer(_req(i), 0.0) is None
    verdicts = adm.drain(0.6)
    assert [v.refused for v in verdicts] == [True] * 4
    assert ["closest" in v.reason for v in verdicts] == [True, False, False, False]
    assert all("waited 600 ms" in v.reason for v in verdicts)
