"""Simulator fidelity: replay what a real run served through the simulator and compare, request
by request, the simulated TTFT and ATGT with the measured ones."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from placement.admission import AdmissionLimits
from placement.latency_correction import BusyInterval, WorkerCorrection, scaled_profile
from placement.simulator.metrics import RequestRecord, meets_slos
from placement.simulator.length_model import DEFAULT_LENGTH_MODEL
from placement.simulator.scenario import Scenario, run
from placement.simulator.worker_engine import EngineOptions
from placement.traces import TraceRequest
from predictors.latency.profile import WorkerProfile


@dataclass(frozen=True)
class ObservedRequest:
    """One request of a real run: when it was sent, its lengths, what it measured."""

    sent_s: float
    input_len: int
    output_len: int
    ok: bool
    ttft_s: float | None
    atgt_s: float | None
    refused: bool = False  # turned away by the server's admission (HTTP 429)


@dataclass(frozen=True)
class FidelityReport:
    """Median relative errors |sim - real| / real over requests served in both, the median of
    sim / real over them (below 1: the simulator is faster than the real run), and attainment."""

    requests: int
    compared: int
    ttft_median_rel_error: float
    atgt_median_rel_error: float
    real_attainment: float
    sim_attainment: float
    ttft_median_ratio: float = math.nan
    atgt_median_ratio: float = math.nan
    # the ATGT ratio in each third of the compared requests by their simulated decoding batch
    # (low, mid, high): flat when the decode step grows with the batch as the real one did
    atgt_ratio_by_batch: tuple[float, float, float] = (math.nan, math.nan, math.nan)

    @property
    def attainment_gap_points(self) -> float:
        return abs(self.real_attainment - self.sim_attainment) * 100

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "attainment_gap_points": self.attainment_gap_points}


def _median_rel_error(sim: np.ndarray, real: np.ndarray) -> float:
    keep = real > 0
    return float(np.median(np.abs(sim[keep] - real[keep]) / real[keep])) if keep.any() else math.nan


def _median_ratio(sim: np.ndarray, real: np.ndarray) -> float:
    keep = real > 0
    return float(np.median(sim[keep] / real[keep])) if keep.any() else math.nan


def decode_batches(records: Sequence[RequestRecord]) -> dict[str, float]:
    """Per finished request of more than one token, by id: the mean number of requests its
    worker was decoding (itself included) over its decode, from first token to finish."""
    by_worker: dict[str | None, list[RequestRecord]] = {}
    for r in records:
        if r.output_len > 1 and not math.isnan(r.finish_s) and r.finish_s > r.first_token_s:
            by_worker.setdefault(r.worker_id, []).append(r)
    batches = {}
    for group in by_worker.values():
        starts = np.array([r.first_token_s for r in group])
        ends = np.array([r.finish_s for r in group])
        for r in group:
            overlap = np.clip(np.minimum(ends, r.finish_s) - np.maximum(starts, r.first_token_s), 0.0, None)
            batches[r.request.id] = float(overlap.sum() / (r.finish_s - r.first_token_s))
    return batches


def _ratio_by_batch(sim: np.ndarray, real: np.ndarray, batch: np.ndarray) -> tuple[float, float, float]:
    if len(batch) < 3:
        return (math.nan, math.nan, math.nan)
    order = np.argsort(batch, kind="stable")
    low, mid, high = (_median_ratio(sim[part], real[part]) for part in np.array_split(order, 3))
    return low, mid, high


def replay_trace(
    observed: Sequence[ObservedRequest], *, with_refused: bool
) -> tuple[list[ObservedRequest], list[TraceRequest]]:
    """The observed requests that reached the server's placement (served; also those its
    admission refused, `with_refused`), in send order, and the trace that replays them (send
    times from the first, real lengths)."""
    replayed = sorted((o for o in observed if (o.ok and o.ttft_s is not None) or (with_refused and o.refused)),
                      key=lambda o: o.sent_s)
    t0 = replayed[0].sent_s if replayed else 0.0
    return replayed, [TraceRequest(o.sent_s - t0, o.input_len, max(1, o.output_len)) for o in replayed]


def recorded_corrections(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The latency corrections a run's placement actor recorded, per worker (runs from before
    every policy measured them kept Aladdin's inside its closed loop's stats)."""
    legacy = (summary.get("placement_closed_loop") or {}).get("corrections")
    return summary.get("placement_latency_corrections") or legacy or {}


def recorded_intervals(summary: dict[str, Any]) -> dict[str, list[BusyInterval]]:
    """Each worker's busy intervals over the run, in order, from `bench-suite`'s closed-loop
    series (every 2 s, each worker's last intervals: every one of them when sampled that
    often) and the stats at its end. Intervals already in the series' first sample are left
    out: they may predate the run (the previous load's tail). Empty for runs without a series."""
    series = summary.get("placement_closed_loop_series") or []
    if not series:
        return {}
    before = {w: max((int(r[0]) for r in c.get("recent_intervals") or []), default=0)
              for w, c in series[0]["corrections"].items()}
    rows: dict[str, dict[int, list[float]]] = {}
    for sample in [*series[1:], {"corrections": recorded_corrections(summary)}]:
        for w, c in sample["corrections"].items():
            for number, *row in c.get("recent_intervals") or []:
                if number > before.get(w, 0):
                    rows.setdefault(w, {})[int(number)] = row
    return {w: [BusyInterval(*by_number[n]) for n in sorted(by_number)] for w, by_number in rows.items()}


def run_corrections(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The latency correction of a run's engines as one fit over every worker's intervals
    (`recorded_intervals`; each worker's k-th of n taken at k / n of the run, so the heartbeats
    keep about their order), with a memory as long as their busy time, so the intervals count
    about alike: the replay times the whole run with one timing for all its workers, while the
    live fits' factors at the run's end hold only its last seconds where the live loop chose a
    short memory, and one worker's intervals alone trade its decode step's fixed part against
    its batch part. The TTFT offset is the recorded ones' mean. Runs without recorded
    intervals: their recorded end-of-run corrections."""
    recorded = recorded_corrections(summary)
    intervals = recorded_intervals(summary)
    if not intervals:
        return recorded
    merged = sorted(((k / len(rows), interval) for rows in intervals.values() for k, interval in enumerate(rows)),
                    key=lambda position: position[0])
    fit = WorkerCorrection((max(sum(interval.elapsed_s for _, interval in merged), 1.0),))
    for _, interval in merged:
        fit.observe(interval)
    offsets = [c["ttft_offset_s"] for c in recorded.values() if c.get("intervals")]
    kf, kb, kp = fit.factors()
    return {"run": {"decode_fixed_factor": kf, "decode_batch_factor": kb, "prefill_factor": kp,
                    "intervals": fit.intervals, "ttft_offset_s": float(np.mean(offsets)) if offsets else 0.0}}


def corrected_timing(
    profile: WorkerProfile, corrections: dict[str, dict[str, Any]] | None, ttft_offset_s: float | None = None,
) -> WorkerProfile | None:
    """`profile` scaled by the mean of the latency corrections a run's placement actor recorded
    per worker (`recorded_corrections`; the simulated engines share one timing): each factor's
    geometric mean, the TTFT offset's mean, each worker weighted by the busy intervals its
    correction rests on (a worker that saw little work has the least certain factors). None when
    it recorded none. `ttft_offset_s` replaces their TTFT offset: a policy without a
    closed loop makes no promises to learn one from (its factors come from the engines' busy
    time alone)."""
    measured = [c for c in (corrections or {}).values() if c.get("intervals")]
    if not measured:
        return None
    weights = [c["intervals"] for c in measured]
    # runs from before the decode step had two factors recorded one, "decode_factor"
    factor = lambda key: float(np.exp(np.average(  # noqa: E731
        [math.log(c.get(key, c.get("decode_factor"))) for c in measured], weights=weights)))
    offset = float(np.average([c["ttft_offset_s"] for c in measured], weights=weights)) \
        if ttft_offset_s is None else ttft_offset_s
    return scaled_profile(profile, decode_fixed_factor=factor("decode_fixed_factor"),
                          decode_batch_factor=factor("decode_batch_factor"),
                          prefill_factor=factor("prefill_factor"), ttft_offset_s=offset)


def run_timing(
    profile: WorkerProfile, summary: dict[str, Any], summaries: Sequence[dict[str, Any]]
) -> WorkerProfile | None:
    """How the engines of the run `summary` (one of `summaries`, runs on the same host) timed
    against `profile`: its own corrections (`run_corrections`), else those of every run in `summaries`
    (Ray Serve LLM's runs, and runs from before every policy measured them, recorded none).
    The TTFT offset of a run without a closed loop (which alone learns one, from its promises)
    is the median of the offsets the runs with one learned."""
    pooled = {f"{i}:{w}": c for i, s in enumerate(summaries) for w, c in run_corrections(s).items()}
    offset_s = None
    if not summary.get("placement_closed_loop"):
        learned = [c["ttft_offset_s"] for s in summaries if s.get("placement_closed_loop")
                   for c in recorded_corrections(s).values() if c.get("intervals")]
        offset_s = float(np.median(learned)) if learned else None
    return corrected_timing(profile, run_corrections(summary) or pooled, offset_s)


def recorded_placement_delay_s(summary: dict[str, Any]) -> float:
    """The run's median delay from a request's arrival to placement (`placement.path_delay`;
    0 where the run recorded none): the replay places each request that much after its send, so
    the simulated admission and placement see it as late as the live ones did, and the offset,
    learned after placement, does not have to hold it."""
    return float(summary.get("placement_path_delay_s") or 0.0)


def simulate_observed(
    observed: Sequence[ObservedRequest],
    profile: WorkerProfile,
    *,
    policy: str,
    workers: int,
    slo_ttft_s: float,
    slo_atgt_s: float,
    engine: EngineOptions,
    length_model: str = DEFAULT_LENGTH_MODEL,
    seed: int = 0,
    admission: AdmissionLimits | None = None,
    policy_options: dict[str, Any] | None = None,
    timing_profile: WorkerProfile | None = None,
    placement_delay_s: float = 0.0,
) -> FidelityReport:
    """Simulate the observed requests that reached the engines (same send times and lengths) on
    `workers` workers under `policy`, and compare with what was measured. With `admission`
    (the server admitted under it) the requests it refused are replayed too, through the same
    admission; requests that failed otherwise never reached an engine and are not replayed.
    Whatever either side did not serve counts as missed in its attainment. `timing_profile`: the
    workers' latencies as the run's placement corrected them (`corrected_timing`), when the
    simulated engines should run on those rather than on `profile`. `placement_delay_s`: how long
    after its send each request reached placement (`recorded_placement_delay_s`)."""
    replayed, trace = replay_trace(observed, with_refused=admission is not None)
    scenario = Scenario(trace=trace, profile=profile, slo_ttft_s=slo_ttft_s, slo_atgt_s=slo_atgt_s,
                        length_model=length_model, engine=engine, seed=seed, admission=admission,
                        timing_profile=timing_profile, placement_delay_s=placement_delay_s)
    records = run(scenario, policy, workers, policy_options=policy_options).records if trace else []
    batches = decode_batches(records)
    sim_ttft, real_ttft, sim_atgt, real_atgt, batch = [], [], [], [], []
    real_met = sim_met = 0
    for record, obs in zip(records, replayed):
        served = obs.ok and obs.ttft_s is not None
        if served:
            real_met += meets_slos(obs.ttft_s, obs.atgt_s or 0.0, slo_ttft_s, slo_atgt_s)
        if math.isnan(record.finish_s):
            continue
        sim_met += record.slos_met
        if not served:
            continue
        sim_ttft.append(record.ttft_s)
        real_ttft.append(obs.ttft_s)
        if obs.atgt_s is not None and record.output_len > 1:
            sim_atgt.append(record.atgt_s)
            real_atgt.append(obs.atgt_s)
            batch.append(batches.get(record.request.id, 1.0))
    n = len(observed)
    return FidelityReport(
        requests=n,
        compared=len(real_ttft),
        ttft_median_rel_error=_median_rel_error(np.array(sim_ttft), np.array(real_ttft)),
        atgt_median_rel_error=_median_rel_error(np.array(sim_atgt), np.array(real_atgt)),
        real_attainment=real_met / n if n else math.nan,
        sim_attainment=sim_met / n if n else math.nan,
        ttft_median_ratio=_median_ratio(np.array(sim_ttft), np.array(real_ttft)),
        atgt_median_ratio=_median_ratio(np.array(sim_atgt), np.array(real_atgt)),
        atgt_ratio_by_batch=_ratio_by_batch(np.array(sim_atgt), np.array(real_atgt), np.array(batch)),
    )
