"""Aladdin's application metrics, exported through `ray.util.metrics`.

Every metric the app records is defined here (`METRICS`), and the rest of the app calls the
small `record_*` functions below instead of touching `ray.util.metrics` itself. Ray ships the
values from each process to the node's metrics agent, which serves them in Prometheus format
on the node's metrics export port (the Ray dashboard's charts and `docs/grafana/` read them
from a Prometheus that scrapes that port; see docs/metrics.md).

How Ray exports them (Ray 2.60, OpenTelemetry path, checked against the installed source and
a live cluster):

- Prometheus names get Ray's `ray_` namespace prefix; counters also get `_total`; histograms
  become `_bucket` / `_sum` / `_count`. `MetricSpec.prometheus_name` gives the exported name.
- Each series carries our tags plus Ray's `Component`, `NodeAddress`, `SessionName`,
  `Version` and `WorkerId` labels, so the same metric recorded by two processes gives two
  series (sum or max over `WorkerId` in queries).
- A process exports every `metrics_report_interval_ms` (10 s by default;
  `RAY_metrics_report_interval_ms` changes it). Histogram `_sum` is approximate: the agent
  rebuilds observations from bucket midpoints. Counts and buckets are exact.
- A gauge value is exported once after it is set, and the agent forgets a gauge series not
  refreshed for two export intervals. Gauges recorded here are therefore cached and re-set by
  a background thread every half interval until `forget_worker` drops them.

Recording never raises: a metric that fails logs one warning and is skipped from then on,
because metrics must not break the serving path. In a process not connected to Ray (unit
tests, the simulator) recording is a no-op.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

logger = logging.getLogger(__name__)

MetricKind = Literal["counter", "gauge", "histogram"]
PlacementOutcome = Literal[
    "placed", "least_violation", "fallback", "waited", "admitted", "admitted_after_wait", "refused"
]

#: Ray prefixes application metrics with this namespace in Prometheus.
PROMETHEUS_PREFIX = "ray_"

# Bucket boundaries. Ray requires positive boundaries; an implicit +Inf bucket follows the last.
#: TTFT, seconds: 10 ms (a short prompt on a warm GPU) to 60 s (a long queue), ~1-2-5 spaced.
TTFT_BUCKETS_S: tuple[float, ...] = (
    0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
)
#: ATGT, seconds per output token: 1 ms to 1 s, denser around the usual 20-200 ms SLOs.
ATGT_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
)
#: |actual - predicted| output length, tokens; an exact prediction lands in the first bucket.
LENGTH_ERROR_BUCKETS_TOKENS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000,
)
#: |actual - predicted| / max(actual, 1): how wrong relative to the request's size.
LENGTH_RELATIVE_ERROR_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
)

PLACEMENT_OUTCOMES: tuple[str, ...] = get_args(PlacementOutcome)
#: Values of the `slo` tag of the SLO counters; "all" means every SLO of the request was met.
SLO_KINDS: tuple[str, ...] = ("ttft", "atgt", "all")


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its `ray.util.metrics` name, kind, description, tag keys, buckets."""

    name: str
    kind: MetricKind
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    @property
    def prometheus_name(self) -> str:
        """The metric family name in Ray's Prometheus endpoint (`ray_` prefix, counters `_total`)."""
        suffix = "_total" if self.kind == "counter" else ""
        return f"{PROMETHEUS_PREFIX}{self.name}{suffix}"

    @property
    def prometheus_series(self) -> tuple[str, ...]:
        """The sample names Prometheus stores (what PromQL queries use)."""
        if self.kind == "histogram":
            return tuple(f"{self.prometheus_name}_{s}" for s in ("bucket", "sum", "count"))
        return (self.prometheus_name,)


TTFT = MetricSpec(
    "aladdin_ttft_seconds", "histogram", "Time to first token of served requests, seconds.",
    ("policy",), TTFT_BUCKETS_S,
)
ATGT = MetricSpec(
    "aladdin_atgt_seconds", "histogram",
    "Average token generation time (decode time / (output tokens - 1)) of served requests, seconds.",
    ("policy",), ATGT_BUCKETS_S,
)
SLO_MET = MetricSpec(
    "aladdin_slo_met", "counter",
    "Requests that met their SLO; slo=ttft|atgt|all (all: every SLO of the request).", ("slo", "policy"),
)
SLO_MISSED = MetricSpec(
    "aladdin_slo_missed", "counter",
    "Requests that missed their SLO; slo=ttft|atgt|all (all: at least one SLO missed).", ("slo", "policy"),
)
LENGTH_ERROR = MetricSpec(
    "aladdin_output_length_error_tokens", "histogram",
    "|actual - predicted| output length of naturally ended requests, tokens; "
    "direction=under (predicted too few) or over (too many, or exact).",
    ("direction",), LENGTH_ERROR_BUCKETS_TOKENS,
)
LENGTH_RELATIVE_ERROR = MetricSpec(
    "aladdin_output_length_relative_error", "histogram",
    "|actual - predicted| / max(actual, 1) output length of naturally ended requests.",
    ("direction",), LENGTH_RELATIVE_ERROR_BUCKETS,
)
OUTPUT_TOKENS = MetricSpec(
    "aladdin_output_tokens", "counter",
    "Output tokens of naturally ended requests, kind=predicted|actual (their rate ratio is the predictor's bias).",
    ("kind",),
)
WORKER_KV_USED = MetricSpec(
    "aladdin_worker_kv_used_fraction", "gauge", "Fraction of a worker's KV-cache blocks in use.", ("worker",),
)
WORKER_RUNNING = MetricSpec(
    "aladdin_worker_running_requests", "gauge", "Requests a worker's engine is running.", ("worker",),
)
WORKER_WAITING = MetricSpec(
    "aladdin_worker_waiting_requests", "gauge", "Requests waiting in a worker's engine queue.", ("worker",),
)
QUEUE_LENGTH = MetricSpec(
    "aladdin_queue_length", "gauge", "Requests waiting in the placement queue (not yet on a worker).",
)
PATH_DELAY = MetricSpec(
    "aladdin_path_delay_seconds", "gauge",
    "Time from a request's arrival to placement's first sight of it over recent requests (quantile=0.5|0.9), s: "
    "the part of its TTFT SLO spent before placement.", ("quantile",),
)
PLACEMENT_DECISIONS = MetricSpec(
    "aladdin_placement_decisions", "counter",
    "Placement decisions; outcome=placed (fits every SLO), least_violation (no worker fits; the "
    "least-violating one), fallback (placement unavailable; default routing), waited (queued); "
    "admission: admitted (fits now), admitted_after_wait (fit after waiting), refused (429).",
    ("policy", "outcome"),
)
MIN_WORKERS_ESTIMATE = MetricSpec(
    "aladdin_min_workers_estimate", "gauge", "Minimal number of workers the planner estimates recent demand needs.",
)
MIN_GPUS_ESTIMATE = MetricSpec(
    "aladdin_min_gpus_estimate", "gauge", "Minimal number of GPUs the planner estimates recent demand needs.",
)
PACKING_SHARE = MetricSpec(
    "aladdin_packing_share", "gauge",
    "Share of an SLO (slo=ttft|atgt) Aladdin packs workers to, adapted from measured attainment.", ("slo",),
)
PROMISES_MISSED = MetricSpec(
    "aladdin_promises_missed", "counter",
    "Requests placed within the packing budget that missed that SLO anyway (slo=ttft|atgt): the model's misses.",
    ("slo",),
)
WORKER_CORRECTION = MetricSpec(
    "aladdin_worker_latency_factor", "gauge",
    "A worker's measured over profiled time (term=decode_fixed|decode_batch|prefill), from its busy intervals.",
    ("worker", "term"),
)
WORKER_MODEL_ERROR = MetricSpec(
    "aladdin_worker_latency_model_error", "gauge",
    "A worker's recent busy-time prediction error, |predicted - measured| / measured, before each correction step.",
    ("worker",),
)
WORKER_MODEL_MEMORY = MetricSpec(
    "aladdin_worker_latency_model_memory_seconds", "gauge",
    "The memory (busy seconds) of the latency-correction fit a worker's model uses, chosen by its own error: "
    "short while the worker's speed drifts.",
    ("worker",),
)
WORKER_TTFT_OFFSET = MetricSpec(
    "aladdin_worker_ttft_offset_seconds", "gauge",
    "Serving-path latency added to a worker's TTFT model from measured TTFTs, seconds.", ("worker",),
)
PREFIX_TOKENS = MetricSpec(
    "aladdin_prefix_tokens", "counter",
    "Prompt tokens of finished requests per worker, kind=prompt (all), predicted_hit (placement expected the "
    "worker's prefix cache to hold them), engine_hit (vLLM reported taking them from its cache); the rates' "
    "ratios are the predicted and the engine's prefix hit rates.", ("worker", "kind"),
)
WORKERS_HELD = MetricSpec("aladdin_workers_held", "gauge", "Workers currently held (running or starting).")
GPUS_HELD = MetricSpec("aladdin_gpus_held", "gauge", "GPUs currently held by workers.")

#: Every metric the app exports, in the order docs/metrics.md lists them.
METRICS: tuple[MetricSpec, ...] = (
    TTFT, ATGT, SLO_MET, SLO_MISSED, LENGTH_ERROR, LENGTH_RELATIVE_ERROR, OUTPUT_TOKENS,
    WORKER_KV_USED, WORKER_RUNNING, WORKER_WAITING, QUEUE_LENGTH, PATH_DELAY, PLACEMENT_DECISIONS,
    MIN_WORKERS_ESTIMATE, MIN_GPUS_ESTIMATE, WORKERS_HELD, GPUS_HELD,
    PACKING_SHARE, PROMISES_MISSED, WORKER_CORRECTION, WORKER_MODEL_ERROR, WORKER_MODEL_MEMORY, WORKER_TTFT_OFFSET,
    PREFIX_TOKENS,
)

# ---- per-process registry ---------------------------------------------------------------
_TagKey = tuple[tuple[str, str], ...]


class _Registry:
    """The `ray.util.metrics` objects of this process, and the gauge values it keeps alive.

    Ray metric objects register with the process's core worker, so they are created in the
    process that records (an actor or replica), once: creating them at import time would
    create them in the driver or fail where Ray is not initialized.
    """

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        self.metrics: dict[str, Any] = {}
        for spec in METRICS:
            if spec.kind == "counter":
                self.metrics[spec.name] = Counter(spec.name, spec.description, spec.tag_keys)
            elif spec.kind == "gauge":
                self.metrics[spec.name] = Gauge(spec.name, spec.description, spec.tag_keys)
            else:
                self.metrics[spec.name] = Histogram(
                    spec.name, spec.description, list(spec.boundaries), spec.tag_keys
                )
        self._lock = threading.Lock()
        # (metric name, tags) -> value; re-set every half export interval (see module doc).
        self._gauges: dict[tuple[str, _TagKey], float] = {}
        self._refresher: threading.Thread | None = None
        self.refresh_period_s = _export_interval_s() / 2

    def set_gauge(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> None:
        """Cache the value; a new series is set at once, a known one by the next refresh
        (within half an export interval, so before the next export): setting Ray's gauge is
        ~50 us, and the placement actor updates three per heartbeat, hundreds per second."""
        key = (spec.name, tuple(sorted(tags.items())))
        with self._lock:  # set and cache together, ordered against refresh and drop_gauges
            if key not in self._gauges:
                self.metrics[spec.name].set(value, tags=tags)
            self._gauges[key] = value
        self._ensure_refresher()

    def drop_gauges(self, predicate: Callable[[str, dict[str, str]], bool]) -> int:
        """Set the cached gauge series that match to 0 once and stop refreshing them.

        Under the lock, so a concurrent refresh cannot re-export the old value after the 0.
        """
        with self._lock:
            keys = [k for k in self._gauges if predicate(k[0], dict(k[1]))]
            for name, tags in keys:
                del self._gauges[(name, tags)]
                _guarded(name, lambda name=name, tags=tags: self.metrics[name].set(0.0, tags=dict(tags)))
        return len(keys)

    def refresh(self) -> None:
        """Re-set every cached gauge, so the emitter exports it again this interval."""
        with self._lock:  # a few C++ calls; holding the lock keeps drop_gauges' 0 last
            for (name, tags), value in self._gauges.items():
                _guarded(name, lambda name=name, tags=tags, value=value: self.metrics[name].set(value, tags=dict(tags)))

    def _ensure_refresher(self) -> None:
        if self._refresher is not None:
            return
        with self._lock:
            if self._refresher is not None:
                return
            self._refresher = threading.Thread(target=self._refresh_loop, name="aladdin-metrics-gauges", daemon=True)
            self._refresher.start()

    def _refresh_loop(self) -> None:
        stop = threading.Event()  # never set: a daemon thread for the life of the process
        while not stop.wait(self.refresh_period_s):
            self.refresh()


_registry: _Registry | None = None
_registry_failed = False
_registry_lock = threading.Lock()
_warned: set[str] = set()


def _export_interval_s() -> float:
    """How often this process exports metrics (the emitter floors it at 1 s)."""
    try:
        import ray

        return max(ray._config.metrics_report_interval_ms(), 1000) / 1000
    except Exception:
        return 10.0  # Ray's default


def _warn_once(key: str, message: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


def _guarded(name: str, action: Callable[[], None]) -> None:
    """Run one metric update; a failure logs once per metric and never propagates."""
    if name in _warned:
        return
    try:
        action()
    except Exception as exc:
        _warn_once(name, "metric %s failed and is disabled in this process: %r", name, exc)


def _get_registry() -> _Registry | None:
    """This process's registry, created on first use; None where Ray is not initialized."""
    global _registry, _registry_failed
    if _registry is not None or _registry_failed:
        return _registry
    try:
        import ray

        if not ray.is_initialized():
            return None  # not cached: Ray may be initialized later in this process
    except Exception:
        return None
    with _registry_lock:
        if _registry is None and not _registry_failed:
            try:
                _registry = _Registry()
            except Exception as exc:
                _registry_failed = True
                _warn_once("registry", "Aladdin metrics are disabled in this process: %r", exc)
    return _registry


def _finite(value: float | int | None) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _observe(reg: _Registry, spec: MetricSpec, value: float, tags: dict[str, str]) -> None:
    _guarded(spec.name, lambda: reg.metrics[spec.name].observe(float(value), tags=tags))


def _inc(reg: _Registry, spec: MetricSpec, tags: dict[str, str], value: float = 1.0) -> None:
    _guarded(spec.name, lambda: reg.metrics[spec.name].inc(float(value), tags=tags))


def _set(reg: _Registry, spec: MetricSpec, value: float | int | None, tags: dict[str, str] | None = None) -> None:
    if not _finite(value):
        return  # unknown (None/NaN): leave the last value rather than export garbage
    _guarded(spec.name, lambda: reg.set_gauge(spec, float(value), tags or {}))


# ---- the recording API --------------------------------------------------------------------
def record_request(
    ttft_s: float,
    atgt_s: float | None,
    slo_ttft_s: float | None,
    slo_atgt_s: float | None,
    predicted_tokens: float | None,
    actual_tokens: int,
    policy: str,
) -> None:
    """Record one finished request.

    Observes TTFT and (when defined) ATGT, counts each SLO as met or missed (`slo` tag:
    ttft, atgt, all), and observes the output-length prediction error.

    Args:
        ttft_s: time to first token, seconds.
        atgt_s: average time per output token after the first, seconds; None for a
            one-token reply (no ATGT: that SLO is neither met nor missed).
        slo_ttft_s, slo_atgt_s: the request's SLOs, seconds; None when it has none.
        predicted_tokens: the output length predicted at admission (the mean), or None when
            the actual length says nothing about the prediction: a reply cut at max_tokens
            (or forced with ignore_eos) is a censored observation, and counting it would make
            the predictor look biased.
        actual_tokens: output tokens generated.
        policy: the placement policy that routed it (e.g. "aladdin", "p2c").
    """
    reg = _get_registry()
    if reg is None:
        return
    policy = str(policy)
    if _finite(ttft_s):
        _observe(reg, TTFT, ttft_s, {"policy": policy})
    if _finite(atgt_s):
        _observe(reg, ATGT, atgt_s, {"policy": policy})  # type: ignore[arg-type]

    verdicts: list[bool] = []
    for kind, value, slo in (("ttft", ttft_s, slo_ttft_s), ("atgt", atgt_s, slo_atgt_s)):
        if not (_finite(value) and _finite(slo)):
            continue  # no such SLO, or not measurable for this request
        met = value <= slo  # type: ignore[operator]
        verdicts.append(met)
        _inc(reg, SLO_MET if met else SLO_MISSED, {"slo": kind, "policy": policy})
    if verdicts:
        _inc(reg, SLO_MET if all(verdicts) else SLO_MISSED, {"slo": "all", "policy": policy})

    if _finite(predicted_tokens) and _finite(actual_tokens) and actual_tokens >= 0:
        error = actual_tokens - predicted_tokens  # type: ignore[operator]
        # Histogram buckets must be positive, so the sign travels as a tag. Under-prediction
        # is the costly side (KV runs out, decode slows), hence its own series.
        direction = {"direction": "under" if error > 0 else "over"}
        _observe(reg, LENGTH_ERROR, abs(error), direction)
        _observe(reg, LENGTH_RELATIVE_ERROR, abs(error) / max(actual_tokens, 1), direction)
        if predicted_tokens > 0:  # type: ignore[operator]
            _inc(reg, OUTPUT_TOKENS, {"kind": "predicted"}, predicted_tokens)  # type: ignore[arg-type]
        if actual_tokens > 0:
            _inc(reg, OUTPUT_TOKENS, {"kind": "actual"}, actual_tokens)


def record_worker(worker_id: str, kv_used_fraction: float, running: int, waiting: int) -> None:
    """Set a worker's KV use (0..1), running and waiting request counts.

    The values stay exported (re-set in the background) until `forget_worker(worker_id)`;
    call that when the replica goes away, or its series would outlive it.
    """
    reg = _get_registry()
    if reg is None:
        return
    tags = {"worker": str(worker_id)}
    _set(reg, WORKER_KV_USED, kv_used_fraction, tags)
    _set(reg, WORKER_RUNNING, running, tags)
    _set(reg, WORKER_WAITING, waiting, tags)


def forget_worker(worker_id: str) -> None:
    """Drop a replica's gauges: exported as 0 once, then no longer refreshed, so Ray's
    metrics agent removes the series within about two export intervals (20 s by default).

    Zero first so a dashboard shows the replica emptied rather than its last load frozen
    until the series expires.
    """
    reg = _get_registry()
    if reg is None:
        return
    rid = str(worker_id)
    reg.drop_gauges(lambda _name, tags: tags.get("worker") == rid)


def record_queue_length(n: int) -> None:
    """Set the number of requests waiting for placement (kept exported until changed)."""
    reg = _get_registry()
    if reg is not None:
        _set(reg, QUEUE_LENGTH, n)


def record_path_delay(p50_s: float | None, p90_s: float | None) -> None:
    """Set the recent delays from arrival to placement (None before any request: not set)."""
    reg = _get_registry()
    if reg is None:
        return
    for quantile, value in (("0.5", p50_s), ("0.9", p90_s)):
        if value is not None:
            _set(reg, PATH_DELAY, value, {"quantile": quantile})


def record_placement(policy: str, outcome: PlacementOutcome | str) -> None:
    """Count one placement decision.

    outcome: "placed" (a worker meets every SLO), "least_violation" (none does; the one that
    violates least), "fallback" (placement unavailable, default routing used), "waited"
    (held in the queue), or admission's "admitted", "admitted_after_wait", "refused". Anything else is counted as "other" (and logged once) to keep the
    tag's cardinality bounded.
    """
    reg = _get_registry()
    if reg is None:
        return
    outcome = str(outcome)
    if outcome not in PLACEMENT_OUTCOMES:
        _warn_once(f"outcome:{outcome}", "unknown placement outcome %r, counted as 'other'", outcome)
        outcome = "other"
    _inc(reg, PLACEMENT_DECISIONS, {"policy": str(policy), "outcome": outcome})


def record_capacity(estimate_workers: float, estimate_gpus: float, workers_held: int, gpus_held: float) -> None:
    """Set the planner's minimal worker/GPU estimate for recent demand and what is held now."""
    reg = _get_registry()
    if reg is None:
        return
    _set(reg, MIN_WORKERS_ESTIMATE, estimate_workers)
    _set(reg, MIN_GPUS_ESTIMATE, estimate_gpus)
    _set(reg, WORKERS_HELD, workers_held)
    _set(reg, GPUS_HELD, gpus_held)


def record_closed_loop(
    ttft_share: float, atgt_share: float, missed: dict[str, int],
    prefix_tokens: dict[str, tuple[int, int, int]] | None = None,
) -> None:
    """Set the packing budget's shares, count promises missed since the last call (`missed`:
    per SLO), and count each worker's prefix tokens since the last call (prompt, predicted
    hit, engine hit)."""
    reg = _get_registry()
    if reg is None:
        return
    for worker, counts in (prefix_tokens or {}).items():
        for kind, n in zip(("prompt", "predicted_hit", "engine_hit"), counts):
            if n > 0:
                _inc(reg, PREFIX_TOKENS, {"worker": worker, "kind": kind}, n)
    _set(reg, PACKING_SHARE, ttft_share, {"slo": "ttft"})
    _set(reg, PACKING_SHARE, atgt_share, {"slo": "atgt"})
    for slo, n in missed.items():
        if n > 0:
            _inc(reg, PROMISES_MISSED, {"slo": slo}, n)


def record_corrections(corrections: dict[str, tuple[tuple[float, float, float], float, float, float]]) -> None:
    """Set each worker's latency correction: its (decode fixed, decode batch, prefill) factors,
    its TTFT offset in seconds, its model's recent relative error and its fit's memory in
    seconds."""
    reg = _get_registry()
    if reg is None:
        return
    for worker, (factors, offset, error, memory_s) in corrections.items():
        for term, factor in zip(("decode_fixed", "decode_batch", "prefill"), factors):
            _set(reg, WORKER_CORRECTION, factor, {"worker": worker, "term": term})
        _set(reg, WORKER_TTFT_OFFSET, offset, {"worker": worker})
        _set(reg, WORKER_MODEL_ERROR, error, {"worker": worker})
        _set(reg, WORKER_MODEL_MEMORY, memory_s, {"worker": worker})


__all__ = [
    "ATGT_BUCKETS_S",
    "LENGTH_ERROR_BUCKETS_TOKENS",
    "LENGTH_RELATIVE_ERROR_BUCKETS",
    "METRICS",
    "PLACEMENT_OUTCOMES",
    "PROMETHEUS_PREFIX",
    "SLO_KINDS",
    "TTFT_BUCKETS_S",
    "MetricSpec",
    "forget_worker",
    "record_capacity",
    "record_closed_loop",
    "record_corrections",
    "record_path_delay",
    "record_placement",
    "record_queue_length",
    "record_request",
    "record_worker",
]
