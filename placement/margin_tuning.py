"""Aladdin's ATGT packing margin chosen by simulation: the share of the ATGT SLO a worker is
packed to (`placement.atgt_margin`) trades requests refused now against SLOs missed later.
The right value depends on how well the profile predicts what clients measure: an engine
profile leaves out the serving path and interference, and needs room (the policy's default,
0.6); a profile fitted to served requests already carries them and needs less.

The margin is chosen on workloads the provider replays (e.g. the requests of `aladdin bench`
runs) through the simulator with the server's admission, exactly as served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from placement.admission import AdmissionLimits
from placement.simulator.scenario import Scenario, run
from placement.simulator.worker_engine import EngineOptions
from placement.traces import TraceRequest
from predictors.latency.profile import WorkerProfile

DEFAULT_MARGINS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: margins whose mean attainment is this close to the best count as equally good; the
#: smallest of them (the safest) is chosen, since the simulator sees exact worker state and
#: the server only heartbeats
NEAR_BEST = 0.01


@dataclass(frozen=True)
class MarginWorkload:
    """One replayed load: its requests, the workers that served it, its SLOs."""

    trace: Sequence[TraceRequest]
    workers: int
    slo_ttft_s: float
    slo_atgt_s: float


@dataclass(frozen=True)
class MarginTuning:
    margin: float
    attainment: dict[float, float]  # mean simulated attainment over the workloads, per margin


def tune_atgt_margin(
    workloads: Sequence[MarginWorkload],
    profile: WorkerProfile,
    *,
    engine: EngineOptions,
    margins: Sequence[float] = DEFAULT_MARGINS,
    limits: AdmissionLimits = AdmissionLimits(),
    seed: int = 0,
) -> MarginTuning:
    """Simulate every workload under Aladdin with admission at each margin; choose the smallest
    margin whose mean attainment is within NEAR_BEST of the best one's."""
    if not workloads or not margins:
        raise ValueError("margin tuning needs at least one workload and one margin")
    attainment: dict[float, float] = {}
    for margin in sorted(margins):
        total = 0.0
        for w in workloads:
            scenario = Scenario(trace=w.trace, profile=profile, slo_ttft_s=w.slo_ttft_s, slo_atgt_s=w.slo_atgt_s,
                                engine=engine, seed=seed, admission=limits)
            total += run(scenario, "aladdin", w.workers, policy_options={"atgt_margin": margin}).summary.attainment
        attainment[margin] = total / len(workloads)
    best = max(attainment.values())
    return MarginTuning(min(m for m, a in attainment.items() if a >= best - NEAR_BEST), attainment)
