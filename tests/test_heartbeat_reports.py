"""Delta heartbeats: a worker's reports of what changed build the same placement state as full
reports would, through lost answers and a restarted actor."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from placement.live import LiveCluster, RunningRequest, WorkerReport
from placement.policies.registry import make_policy
from predictors.latency.families import load_profile_family
from serve_app.worker.heartbeat_reports import FULL_REPORT_EVERY, HeartbeatReports

PROFILE = load_profile_family("llama-2-7b-a100").profile(1)
HEARTBEAT_S = 0.25


def _view(rid: str, arrival_s: float) -> RunningRequest:
    return RunningRequest(rid, arrival_s, 300, 40, 80, 1.0, 0.05)


def _picture(cluster: LiveCluster) -> dict:
    worker = cluster.workers.get("w0")
    if worker is None:
        return {}
    return {
        "residents": {rid: r.decode_from_step is not None for rid, r in worker.residents.items()},
        "steps": worker.steps, "kv_used": worker.kv_used_tokens, "upper": worker.kv_final_tokens,
    }


# heartbeats and decode progress dominate, as in a worker's life
events = st.lists(st.sampled_from(["start", "start", "token", "tokens", "tokens", "end", "beat", "beat", "beat",
                                   "lost", "unanswered", "restart"]), min_size=10, max_size=120)


@settings(max_examples=200, deadline=None)
@given(events)
def test_deltas_build_the_state_full_reports_build(script: list[str]) -> None:
    # the reference cluster gets a full report wherever the other applies a delta; after a
    # restart the lockstep counters start again (per-request counts are then re-based), so
    # only who is resident and decoding is compared
    reference, cluster = LiveCluster(PROFILE, make_policy("jsq")), LiveCluster(PROFILE, make_policy("jsq"))
    reports = HeartbeatReports("w0")
    generated: dict[str, int] = {}
    now_s, n = 0.0, 0
    restarted = full_due = False  # full_due: the cluster knows nothing and has had no full report
    for event in script:
        live = list(reports.running)
        if event == "start":
            rid = f"r{n}"
            n += 1
            for c in (reference, cluster):
                c.place(_view(rid, now_s).to_request(), ["w0"], now_s)
            reports.started(_view(rid, now_s))
            generated[rid] = 0
        elif event in ("token", "tokens") and live:
            for rid in live if event == "tokens" else live[:1]:
                if not generated[rid]:
                    reports.first_token(rid, now_s)
                generated[rid] += 1 + n % 3
        elif event == "end" and live:
            reports.ended(live[0], generated.pop(live[0]))
        elif event == "restart":
            cluster, restarted, full_due = LiveCluster(PROFILE, make_policy("jsq")), True, True
        elif event in ("beat", "lost", "unanswered"):
            now_s += HEARTBEAT_S
            report = reports.report(generated)
            assert report.full or not {r.request_id for r in report.running} & {rid for rid, _ in report.progress}
            if event == "unanswered":  # the call failed before the actor saw it
                reports.failed()
                continue
            reference.report(WorkerReport("w0", running=tuple(_with_count(reports.running[rid], generated[rid])
                                                              for rid in reports.running),
                                          finished=report.finished), now_s)
            asks_full = cluster.report(report, now_s)
            assert asks_full == (full_due and not report.full)
            full_due = full_due and not report.full
            if event == "lost":  # applied, but the answer never came back
                reports.failed()
            else:
                reports.acknowledged(report, full_next=asks_full)
            if not full_due:
                mine, theirs = _picture(cluster), _picture(reference)
                if restarted:
                    mine, theirs = mine.get("residents"), theirs.get("residents")
                assert mine == theirs


def _with_count(view: RunningRequest, tokens: int) -> RunningRequest:
    return replace(view, generated=tokens)


def test_a_delta_carries_only_what_changed() -> None:
    reports = HeartbeatReports("w0")
    for i in range(3):
        reports.started(_view(f"r{i}", 0.0))
    first = reports.report({"r0": 0, "r1": 0, "r2": 0})
    assert first.full and len(first.running) == 3
    reports.acknowledged(first)
    reports.first_token("r0", 0.1)
    second = reports.report({"r0": 1, "r1": 0, "r2": 0})
    assert not second.full and [r.request_id for r in second.running] == ["r0"] and not second.progress
    reports.acknowledged(second)
    third = reports.report({"r0": 5, "r1": 0, "r2": 0})
    assert not third.running and third.progress == (("r0", 5),)
    reports.acknowledged(third)
    assert reports.report({"r0": 5, "r1": 0, "r2": 0}) == WorkerReport("w0", full=False)


def test_reports_turn_full_periodically_after_a_failure_and_when_asked() -> None:
    reports = HeartbeatReports("w0")
    reports.started(_view("r0", 0.0))
    fulls = []
    for _ in range(2 * FULL_REPORT_EVERY):
        report = reports.report({"r0": 0})
        fulls.append(report.full)
        reports.acknowledged(report)
    assert fulls.count(True) == 2 and fulls[0] and fulls[FULL_REPORT_EVERY]
    reports.failed()
    assert reports.report({"r0": 0}).full
    reports.acknowledged(reports.report({"r0": 0}), full_next=True)
    assert reports.report({"r0": 0}).full


def test_a_restarted_cluster_asks_for_a_full_report_and_is_rebuilt_by_it() -> None:
    cluster = LiveCluster(PROFILE, make_policy("jsq"))
    delta = WorkerReport("w0", running=(_view("a", 0.0),), full=False, progress=(("b", 4),))
    assert cluster.report(delta, 1.0)  # an unknown worker
    assert cluster.report(WorkerReport("w0", full=False, progress=(("b", 4),)), 1.25)  # an unknown request
    full = WorkerReport("w0", running=(_view("a", 0.0), _with_count(_view("b", 0.0), 4)))
    assert not cluster.report(full, 1.5)
    assert set(cluster.workers["w0"].residents) == {"a", "b"}
