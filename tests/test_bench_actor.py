"""`aladdin bench-actor`: its simulated workers and report without Ray, and a tiny run against
the real placement actor through Ray."""

from __future__ import annotations

import random

import pytest

from predictors.latency.families import load_profile_family
from serve_app.tools.bench_actor import (
    PLACED_LIFETIME_PERIODS,
    BenchActorOptions,
    CallCounts,
    SimulatedWorker,
    Tally,
    Workload,
    build_result,
    percentile_ms,
    run_bench_actor,
)
from serve_app.tools.cli import main

PROFILE = load_profile_family("llama-2-7b-a100").profile(1)
JSON_KEYS = {"placements_per_s", "p50_ms", "p99_ms", "heartbeat_sweep_ms", "heartbeat_sweep_p99_ms",
             "actor_cpu_ms_per_placement", "actor_cpu_share", "placements", "refused", "workers", "running",
             "callers", "shards", "admission", "duration_s"}


def _worker(running: int) -> tuple[SimulatedWorker, Workload]:
    workload = Workload(random.Random(0), 1.0, 0.05, PROFILE.max_model_len)
    return SimulatedWorker("w0", running, workload, PROFILE, 0.0), workload


def test_a_simulated_worker_keeps_its_running_count_and_replaces_what_finishes() -> None:
    worker, _ = _worker(running=4)
    finished, full = [], []
    for period in range(60):
        report, timings = worker.report(period * 0.25)
        worker.acknowledged(report, {})
        # every running request moved: in full when new (or the report is), else as its count
        assert worker.running == 4 and len(report.running) + len(report.progress) == 4
        assert timings == []  # background requests are not observed
        assert report.kv_capacity_tokens == PROFILE.kv.num_blocks * PROFILE.kv.block_size
        assert report.work is not None and report.work.busy_s > 0
        finished += [rid for rid, _ in report.finished]
        full.append(report.full)
    assert finished and not set(finished) & {r.request_id for r in report.running}
    assert full[0] and not all(full)  # the first report is full, later ones deltas


def test_a_placed_request_runs_in_the_next_report_then_finishes_with_its_timing() -> None:
    worker, workload = _worker(running=0)
    worker.accept(workload.request("c0-0", 0.0))
    reports = []
    for k in range(PLACED_LIFETIME_PERIODS):
        reports.append(worker.report(0.25 * (k + 1)))
        worker.acknowledged(reports[-1][0], {})
    (first, _), (last, timings) = reports[0], reports[-1]
    (running,) = first.running
    assert running.request_id == "c0-0" and running.generated > 0 and running.first_token_s == 0.25
    assert last.running == () and [rid for rid, _ in last.finished] == ["c0-0"]
    assert [t.request_id for t in timings] == ["c0-0"] and timings[0].ttft_s == pytest.approx(0.25)


def test_the_result_counts_outcomes_and_takes_percentiles_in_ms() -> None:
    tally = Tally()
    for k in range(100):
        tally.request((k + 1) / 1e3, f"w{k % 2}", refused=False)
    tally.request(0.5, None, refused=True)
    tally.sweep(0.004, 3.0, 1.0)
    # the counts at the window's end less those at its start
    calls = CallCounts(placement_calls=25, placement_requests=110, heartbeat_calls=10, reports=20) - CallCounts(5, 10, 2, 4)
    result = build_result(BenchActorOptions(workers=2, running=3, callers=1), tally, 2.0, actor_cpu_s=0.5,
                          driver_cpu_s=1.0, actor_outcomes={"placed": 100}, calls=calls)
    d = result.to_dict()
    assert JSON_KEYS <= d.keys()
    assert (d["placements"], d["refused"], d["placements_per_s"]) == (100, 1, 50.0)
    assert d["placements_per_worker"] == {"w0": 50, "w1": 50}
    assert d["actor_cpu_ms_per_placement"] == pytest.approx(5.0) and d["actor_cpu_share"] == pytest.approx(0.25)
    assert d["driver_cpu_share"] == pytest.approx(0.5)
    assert d["heartbeat_sweep_ms"] == pytest.approx(4.0) and d["mean_running_per_worker"] == 3.0
    assert (d["placement_calls_per_s"], d["requests_per_placement_call"]) == (10.0, 5.0)
    assert (d["heartbeat_calls_per_s"], d["reports_per_heartbeat_call"]) == (4.0, 2.0)
    assert percentile_ms([], 50) is None and percentile_ms([0.001, 0.003], 50) == pytest.approx(2.0)
    assert "50 placements/s" in result.summary()


def test_more_shards_than_workers_are_refused_with_exit_code_2(capsys) -> None:
    assert main(["bench-actor", "--workers", "2", "--shards", "3"]) == 2
    assert "shards <= workers" in capsys.readouterr().err
    assert main(["bench-actor", "--workers-per-node", "0"]) == 2
    assert "workers per node >= 1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def local_ray():
    """One Ray instance for both runs (the session's, when another test started it)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.mark.serving
@pytest.mark.parametrize(("admission", "shards", "per_node", "in_phase"),
                         [(False, 1, 1, False), (True, 1, 1, True), (True, 2, 2, False)])
def test_a_tiny_run_places_on_the_simulated_workers(local_ray, admission: bool, shards: int, per_node: int,
                                                    in_phase: bool) -> None:
    result = run_bench_actor(BenchActorOptions(workers=4, running=2, callers=2, admission=admission,
                                               shards=shards, workers_per_node=per_node, in_phase=in_phase,
                                               duration_s=2.0, warmup_s=1.0))
    d = result.to_dict()
    assert JSON_KEYS <= d.keys()
    assert result.placements > 0 and result.heartbeat_sweep_ms is not None
    assert result.heartbeat_calls_per_s > 0 and result.reports_per_heartbeat_call >= 1
    assert result.placement_calls_per_s > 0 and result.requests_per_placement_call >= 1
    assert set(result.placements_per_worker) <= {f"w{i}" for i in range(4)}
    assert sum(result.placements_per_worker.values()) == result.placements
