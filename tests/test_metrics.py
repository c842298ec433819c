"""serve_app.metrics: recording logic (fake metric classes, no Ray) and, on the shared test
cluster, that every aladdin_ metric reaches Ray's Prometheus endpoint."""

from __future__ import annotations

import time
import urllib.request
import uuid
from typing import Any

import pytest

from serve_app import metrics as m

# ---- recording logic, without Ray -------------------------------------------------------


class FakeMetric:
    """Stands in for ray.util.metrics.Counter/Gauge/Histogram; keeps every call."""

    def __init__(self, name: str, description: str = "", *args: Any) -> None:
        self.name = name
        self.calls: list[tuple[str, float, dict[str, str]]] = []
        self.fail = False

    def _rec(self, op: str, value: float, tags: dict[str, str] | None) -> None:
        if self.fail:
            raise RuntimeError("metric backend down")
        self.calls.append((op, value, dict(tags or {})))

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self._rec("inc", value, tags)

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self._rec("observe", value, tags)

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self._rec("set", value, tags)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> m._Registry:
    import ray
    import ray.util.metrics as rum

    for cls in ("Counter", "Gauge", "Histogram"):
        monkeypatch.setattr(rum, cls, FakeMetric)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(m._Registry, "_ensure_refresher", lambda self: None)  # tests call refresh()
    monkeypatch.setattr(m, "_registry", None)
    monkeypatch.setattr(m, "_registry_failed", False)
    monkeypatch.setattr(m, "_warned", set())
    reg = m._get_registry()
    assert reg is not None
    return reg


def calls(reg: m._Registry, spec: m.MetricSpec) -> list[tuple[str, float, dict[str, str]]]:
    return reg.metrics[spec.name].calls


def test_names_and_buckets() -> None:
    names = [spec.name for spec in m.METRICS]
    assert len(names) == len(set(names))
    assert all(n.startswith("aladdin_") for n in names)
    assert m.SLO_MET.prometheus_name == "ray_aladdin_slo_met_total"
    assert m.TTFT.prometheus_series == (
        "ray_aladdin_ttft_seconds_bucket", "ray_aladdin_ttft_seconds_sum", "ray_aladdin_ttft_seconds_count",
    )
    assert m.TTFT_BUCKETS_S[0] == 0.01 and m.TTFT_BUCKETS_S[-1] == 60
    assert m.ATGT_BUCKETS_S[0] == 0.001 and m.ATGT_BUCKETS_S[-1] == 1
    for spec in m.METRICS:
        if spec.kind == "histogram":
            assert list(spec.boundaries) == sorted(set(spec.boundaries)) and spec.boundaries[0] > 0


def test_dashboard_covers_every_metric() -> None:
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "grafana" / "aladdin_dashboard.json"
    dashboard = json.loads(path.read_text())
    exprs = " ".join(
        t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])
    )
    for spec in m.METRICS:
        used = spec.prometheus_series[0] if spec.kind == "histogram" else spec.prometheus_name
        assert used in exprs, f"no dashboard panel queries {used}"
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in names


def test_no_op_without_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(m, "_registry", None)
    m.record_request(0.1, 0.01, 1.0, 0.05, 10, 12, "p2c")
    m.record_worker("r", 0.5, 1, 0)
    m.forget_worker("r")
    m.record_queue_length(3)
    m.record_placement("aladdin", "placed")
    m.record_capacity(1, 1, 2, 2)
    assert m._registry is None


def test_request_slos_and_length_error(fake: m._Registry) -> None:
    # TTFT met, ATGT missed -> "all" missed; under-predicted by 30 tokens
    m.record_request(0.2, 0.08, 1.0, 0.05, 70.0, 100, "aladdin")
    assert calls(fake, m.TTFT) == [("observe", 0.2, {"policy": "aladdin"})]
    assert calls(fake, m.ATGT) == [("observe", 0.08, {"policy": "aladdin"})]
    assert calls(fake, m.SLO_MET) == [("inc", 1.0, {"slo": "ttft", "policy": "aladdin"})]
    assert calls(fake, m.SLO_MISSED) == [
        ("inc", 1.0, {"slo": "atgt", "policy": "aladdin"}),
        ("inc", 1.0, {"slo": "all", "policy": "aladdin"}),
    ]
    assert calls(fake, m.LENGTH_ERROR) == [("observe", 30.0, {"direction": "under"})]
    assert calls(fake, m.LENGTH_RELATIVE_ERROR) == [("observe", pytest.approx(0.3), {"direction": "under"})]
    assert calls(fake, m.OUTPUT_TOKENS) == [
        ("inc", 70.0, {"kind": "predicted"}), ("inc", 100.0, {"kind": "actual"}),
    ]


def test_one_token_reply_and_censored_length(fake: m._Registry) -> None:
    # no ATGT (one token): only the TTFT SLO counts; no prediction: no length error
    m.record_request(0.5, None, 1.0, 0.05, None, 1, "p2c")
    assert calls(fake, m.ATGT) == []
    assert calls(fake, m.SLO_MET) == [
        ("inc", 1.0, {"slo": "ttft", "policy": "p2c"}), ("inc", 1.0, {"slo": "all", "policy": "p2c"}),
    ]
    assert calls(fake, m.SLO_MISSED) == []
    assert calls(fake, m.LENGTH_ERROR) == [] and calls(fake, m.OUTPUT_TOKENS) == []
    # over-prediction, and NaN/None inputs are skipped rather than exported
    m.record_request(float("nan"), 0.01, None, None, 50.0, 20, "p2c")
    assert len(calls(fake, m.TTFT)) == 1
    assert calls(fake, m.LENGTH_ERROR)[-1] == ("observe", 30.0, {"direction": "over"})


def test_worker_gauges_refresh_and_forget(fake: m._Registry) -> None:
    m.record_worker("a", 0.25, 3, 1)
    m.record_worker("b", 0.75, 4, 0)
    m.record_queue_length(7)
    kv = fake.metrics[m.WORKER_KV_USED.name]
    assert kv.calls == [("set", 0.25, {"worker": "a"}), ("set", 0.75, {"worker": "b"})]
    m.forget_worker("a")
    assert kv.calls[-1] == ("set", 0.0, {"worker": "a"})
    for spec in (m.WORKER_KV_USED, m.WORKER_RUNNING, m.WORKER_WAITING):
        fake.metrics[spec.name].calls.clear()
    fake.metrics[m.QUEUE_LENGTH.name].calls.clear()
    fake.refresh()  # only b's series and the queue length stay alive
    assert kv.calls == [("set", 0.75, {"worker": "b"})]
    assert fake.metrics[m.WORKER_RUNNING.name].calls == [("set", 4.0, {"worker": "b"})]
    assert fake.metrics[m.QUEUE_LENGTH.name].calls == [("set", 7.0, {})]
    m.record_worker("b", 0.5, 2, 0)  # a known series: set by the next refresh, not per call
    assert kv.calls == [("set", 0.75, {"worker": "b"})]
    fake.refresh()
    assert kv.calls[-1] == ("set", 0.5, {"worker": "b"})


def test_placement_and_capacity(fake: m._Registry, caplog: pytest.LogCaptureFixture) -> None:
    for outcome in m.PLACEMENT_OUTCOMES:
        m.record_placement("aladdin", outcome)
    m.record_placement("aladdin", "bogus")
    m.record_placement("aladdin", "bogus")
    outcomes = [c[2]["outcome"] for c in calls(fake, m.PLACEMENT_DECISIONS)]
    assert outcomes == [*m.PLACEMENT_OUTCOMES, "other", "other"]
    assert sum("bogus" in r.getMessage() for r in caplog.records) == 1
    m.record_capacity(1.5, 3, 2, 4)
    assert [calls(fake, s)[-1][1] for s in (m.MIN_WORKERS_ESTIMATE, m.MIN_GPUS_ESTIMATE, m.WORKERS_HELD, m.GPUS_HELD)] == [
        1.5, 3.0, 2.0, 4.0,
    ]


def test_closed_loop_gauges_and_missed_counter(fake: m._Registry) -> None:
    m.record_closed_loop(0.8, 0.6, {"ttft": 0, "atgt": 3})
    assert calls(fake, m.PACKING_SHARE) == [("set", 0.8, {"slo": "ttft"}), ("set", 0.6, {"slo": "atgt"})]
    assert calls(fake, m.PROMISES_MISSED) == [("inc", 3.0, {"slo": "atgt"})]  # nothing new for ttft
    m.record_corrections({"a": ((1.2, 4.0, 1.5), 0.04, 0.08, 3.0)})
    m.record_path_delay(None, None)  # before any request: nothing set
    m.record_path_delay(0.03, 0.08)
    assert calls(fake, m.PATH_DELAY) == [("set", 0.03, {"quantile": "0.5"}), ("set", 0.08, {"quantile": "0.9"})]
    assert calls(fake, m.WORKER_CORRECTION) == [("set", 1.2, {"worker": "a", "term": "decode_fixed"}),
                                                 ("set", 4.0, {"worker": "a", "term": "decode_batch"}),
                                                 ("set", 1.5, {"worker": "a", "term": "prefill"})]
    assert calls(fake, m.WORKER_TTFT_OFFSET) == [("set", 0.04, {"worker": "a"})]
    assert calls(fake, m.WORKER_MODEL_ERROR) == [("set", 0.08, {"worker": "a"})]
    assert calls(fake, m.WORKER_MODEL_MEMORY) == [("set", 3.0, {"worker": "a"})]
    m.forget_worker("a")
    assert calls(fake, m.WORKER_TTFT_OFFSET)[-1] == ("set", 0.0, {"worker": "a"})
    m.record_closed_loop(0.8, 0.6, {}, {"a": (1000, 600, 512)})
    assert calls(fake, m.PREFIX_TOKENS) == [("inc", 1000.0, {"worker": "a", "kind": "prompt"}),
                                            ("inc", 600.0, {"worker": "a", "kind": "predicted_hit"}),
                                            ("inc", 512.0, {"worker": "a", "kind": "engine_hit"})]


def test_failing_metric_never_raises_and_logs_once(fake: m._Registry, caplog: pytest.LogCaptureFixture) -> None:
    fake.metrics[m.TTFT.name].fail = True
    for _ in range(3):
        m.record_request(0.2, 0.01, 1.0, 0.05, 10.0, 10, "p2c")
    assert sum(m.TTFT.name in r.getMessage() for r in caplog.records) == 1
    assert len(calls(fake, m.SLO_MET)) == 9  # the other metrics kept recording


# ---- Ray's Prometheus endpoint, on the shared test cluster --------------------------------

# Ray exports every METRICS_EXPORT interval (10 s by default) and forgets a gauge series two
# intervals after its last export; these deadlines are generous on a loaded 2-core machine.
APPEAR_DEADLINE_S = 180
FORGET_DEADLINE_S = 240


def prometheus_url() -> str:
    """The local node's metrics endpoint (the dashboard agent's port; no dashboard needed)."""
    import ray

    node = next(n for n in ray.nodes() if n["Alive"])
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


def scrape(url: str) -> list[tuple[str, dict[str, str]]]:
    """(sample name, labels) of every sample the endpoint serves now."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return [(s.name, s.labels) for fam in text_string_to_metric_families(text) for s in fam.samples]


@pytest.mark.serving
def test_metrics_reach_prometheus(ray_cluster: Any) -> None:
    import ray

    @ray.remote(num_cpus=0)
    class Recorder:
        """Records through serve_app.metrics in its own process, as a replica would."""

        def record(self, keep: str, gone: str) -> None:
            from serve_app import metrics

            metrics.record_request(0.3, 0.02, 1.0, 0.05, 40.0, 55, "test")
            metrics.record_request(2.0, 0.09, 1.0, 0.05, 80.0, 60, "test")
            metrics.record_worker(keep, 0.5, 2, 1)
            metrics.record_worker(gone, 0.9, 3, 0)
            metrics.record_queue_length(4)
            for outcome in metrics.PLACEMENT_OUTCOMES:
                metrics.record_placement("test", outcome)
            metrics.record_capacity(2, 2, 3, 3)
            metrics.record_closed_loop(0.8, 0.7, {"ttft": 1, "atgt": 2},
                                       # counters never expire: under a worker of their own
                                       {f"prefix-{keep}": (1000, 600, 512)})
            metrics.record_corrections({keep: ((1.2, 4.0, 1.5), 0.05, 0.1, 3.0), gone: ((0.9, 0.9, 1.0), 0.0, 0.2, 30.0)})
            metrics.record_path_delay(0.03, 0.08)

        def forget(self, worker_id: str) -> None:
            from serve_app import metrics

            metrics.forget_worker(worker_id)

    keep, gone = f"keep-{uuid.uuid4().hex[:8]}", f"gone-{uuid.uuid4().hex[:8]}"
    recorder = Recorder.remote()
    ray.get(recorder.record.remote(keep, gone))
    url = prometheus_url()
    wanted = {name for spec in m.METRICS for name in spec.prometheus_series}


    def worker_series(samples: list[tuple[str, dict[str, str]]], rid: str) -> set[str]:
        return {name for name, labels in samples if labels.get("worker") == rid}

    worker_names = {m.WORKER_KV_USED.prometheus_name, m.WORKER_RUNNING.prometheus_name, m.WORKER_WAITING.prometheus_name,
                    m.WORKER_CORRECTION.prometheus_name, m.WORKER_TTFT_OFFSET.prometheus_name,
                    m.WORKER_MODEL_ERROR.prometheus_name, m.WORKER_MODEL_MEMORY.prometheus_name}
    # wait for this recorder's own series: earlier tests' workers may already export every name
    deadline = time.monotonic() + APPEAR_DEADLINE_S
    samples: list[tuple[str, dict[str, str]]] = []
    while time.monotonic() < deadline:
        samples = scrape(url)
        if wanted <= {name for name, _ in samples} and worker_series(samples, keep) == worker_names == worker_series(samples, gone):
            break
        time.sleep(1)
    missing = wanted - {name for name, _ in samples}
    assert not missing, f"not exported after {APPEAR_DEADLINE_S} s: {sorted(missing)}"
    assert worker_series(samples, keep) == worker_names == worker_series(samples, gone)
    slo_tags = {(labels["slo"], labels["policy"]) for name, labels in samples if name == m.SLO_MISSED.prometheus_name}
    assert {("ttft", "test"), ("atgt", "test"), ("all", "test")} <= slo_tags

    # A forgotten replica's series expire; the refreshed ones outlive Ray's gauge TTL.
    ray.get(recorder.forget.remote(gone))
    deadline = time.monotonic() + FORGET_DEADLINE_S
    while time.monotonic() < deadline:
        samples = scrape(url)
        if not worker_series(samples, gone):
            break
        time.sleep(2)
    assert not worker_series(samples, gone), f"{gone}'s gauges still exported after {FORGET_DEADLINE_S} s"
    assert worker_series(samples, keep) == worker_names
    ray.kill(recorder)
