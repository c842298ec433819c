"""Minimal-GPU planner: for each tensor-parallel degree, the highest arrival rate one worker
sustains within the SLOs, then the workers and GPUs the workload needs; the cheapest wins.

Per-worker model (a closed-form queueing estimate, not a simulation). For one worker taking a
Poisson stream at rate lam of requests with the workload's prompt lengths l and reply lengths o:
- prefill: each prompt is one prefill of S = prefill_time_s([l]); the prefills use a share
  rho = lam E[S] of the worker's time (must stay < 1).
- decode: N requests decode together; each step takes tau(N) = decode_step_s(N, N c) / (1 - rho)
  (stretched by the interleaved prefills: `placement.interference.token_interval_s`, which
  feasibility uses too), with c = E[o (l + o/2)] / E[o] the time-average
  context of a resident (a request stays in proportion to its reply length). By Little's law
  N = lam E[o] tau(N); N is the smallest root (found by bisection).
- ATGT: tau(N) <= SLO ATGT.
- KV: N k <= capacity, with k = E[o (l + o)] / E[o] the time-average final size of a resident
  (Aladdin reserves each request's final size for its whole stay).
- TTFT: the q-quantile of S, plus the M/G/1 wait lam E[S^2] / (2 (1 - rho)), plus half a decode
  step (a prefill waits for the running step) <= SLO TTFT.
Every constraint tightens as lam grows, so the highest rate is found by bisection. Then
workers = ceil(rate / per-worker rate x (1 + headroom)), GPUs = workers x TP; the fewest GPUs
win, ties to the lower TP. TP degrees above the GPUs of one node are skipped (a TP group stays
inside a node).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from placement.interference import token_interval_s
from predictors.latency.families import ProfileFamily
from predictors.latency.profile import WorkerProfile

BISECTION_STEPS = 60


@dataclass(frozen=True)
class Workload:
    """What must be served: the arrival rate, sample lengths (tokens) and the SLOs."""

    rate_per_s: float
    input_lens: np.ndarray
    output_lens: np.ndarray
    slo_ttft_s: float
    slo_atgt_s: float
    ttft_quantile: float = 0.9

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.slo_ttft_s <= 0 or self.slo_atgt_s <= 0:
            raise ValueError("rate and SLOs must be > 0")
        if len(self.input_lens) == 0 or len(self.input_lens) != len(self.output_lens):
            raise ValueError("need equally many (>= 1) input and output lengths")


@dataclass(frozen=True)
class WorkerLoad:
    """One worker's estimated operating point at an arrival rate."""

    rate_per_s: float
    residents: float
    kv_tokens: float
    atgt_s: float
    ttft_s: float
    prefill_share: float
    stable: bool  # False when prefill or decode cannot keep up at this rate


@dataclass(frozen=True)
class TPOption:
    """The reasoning for one tensor-parallel degree."""

    tp: int
    usable: bool
    reason: str
    kv_capacity_tokens: int
    max_rate_per_worker: float = 0.0
    binding: str = ""  # the constraint that limits the per-worker rate: kv, atgt, ttft or stability
    at_max_rate: WorkerLoad | None = None
    workers: int = 0
    gpus: int = 0


@dataclass(frozen=True)
class Plan:
    """The chosen configuration (None if no TP degree can meet the SLOs) and every option."""

    rate_per_s: float
    slo_ttft_s: float
    slo_atgt_s: float
    headroom: float
    gpus_per_node: int
    choice: TPOption | None
    options: list[TPOption] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class _WorkerModel:
    """The per-worker estimate for one profile and one length sample."""

    def __init__(self, profile: WorkerProfile, workload: Workload) -> None:
        self.profile = profile
        self.workload = workload
        inputs = np.asarray(workload.input_lens, dtype=float)
        outputs = np.maximum(np.asarray(workload.output_lens, dtype=float), 1.0)
        prefill = np.array([profile.prefill_time_s([int(n)]) for n in inputs])
        self.prefill_mean_s = float(prefill.mean())
        self.prefill_sq_mean_s2 = float((prefill * prefill).mean())
        self.prefill_quantile_s = float(np.quantile(prefill, workload.ttft_quantile))
        self.output_mean = float(outputs.mean())
        self.context_per_resident = float((outputs * (inputs + outputs / 2)).mean() / self.output_mean)
        self.final_per_resident = float((outputs * (inputs + outputs)).mean() / self.output_mean)

    def step_s(self, residents: float, prefill_share: float) -> float:
        step = self.profile.decode_step_s(residents, residents * self.context_per_resident)
        return token_interval_s(step, prefill_share)

    def load(self, rate: float) -> WorkerLoad:
        rho = rate * self.prefill_mean_s
        if rho >= 1:
            return WorkerLoad(rate, math.inf, math.inf, math.inf, math.inf, rho, False)
        # smallest N >= 0 with N >= rate E[o] tau(N); the KV cap bounds where to look
        demand = rate * self.output_mean
        hi = self.profile.kv.capacity_tokens / self.final_per_resident
        stable = hi >= demand * self.step_s(hi, rho)
        residents = hi
        if stable:
            lo = 0.0
            for _ in range(BISECTION_STEPS):
                mid = (lo + hi) / 2
                if mid >= demand * self.step_s(max(mid, 1.0), rho):
                    hi = mid
                else:
                    lo = mid
            residents = hi
        batch = max(residents, 1.0)
        atgt = self.step_s(batch, rho)
        wait = rate * self.prefill_sq_mean_s2 / (2 * (1 - rho))
        ttft = self.prefill_quantile_s + wait + atgt * (1 - rho) / 2
        return WorkerLoad(rate, residents, residents * self.final_per_resident, atgt, ttft, rho, stable)

    def violations(self, load: WorkerLoad) -> dict[str, float]:
        """How far each constraint is from its limit (> 1 means violated)."""
        w = self.workload
        return {
            "stability": 0.0 if load.stable else math.inf,
            "kv": load.kv_tokens / self.profile.kv.capacity_tokens,
            "atgt": load.atgt_s / w.slo_atgt_s,
            "ttft": load.ttft_s / w.slo_ttft_s,
        }

    def max_rate(self) -> tuple[float, WorkerLoad | None, str]:
        """The highest rate meeting every constraint, its load and the binding constraint."""
        lo, hi = 0.0, 1.0 / self.prefill_mean_s
        floor = self.violations(self.load(1e-9 * hi))
        if max(floor.values()) > 1:
            return 0.0, None, max(floor, key=floor.get)
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2
            if max(self.violations(self.load(mid)).values()) <= 1:
                lo = mid
            else:
                hi = mid
        beyond = self.violations(self.load(hi))
        return lo, self.load(lo), max(beyond, key=beyond.get)


def plan_tp(profile: WorkerProfile, workload: Workload, headroom: float) -> TPOption:
    """The option for one profile: its highest per-worker rate and what the workload needs."""
    capacity = profile.kv.capacity_tokens
    if capacity == 0:
        return TPOption(profile.tp, False, "no KV cache", capacity)
    rate, load, binding = _WorkerModel(profile, workload).max_rate()
    if load is None:
        return TPOption(profile.tp, False, f"{binding} SLO missed even at zero load", capacity, binding=binding)
    workers = math.ceil(workload.rate_per_s / rate * (1 + headroom))
    return TPOption(
        tp=profile.tp, usable=True, reason=f"{rate:.3g} req/s per worker, limited by {binding}",
        kv_capacity_tokens=capacity, max_rate_per_worker=rate, binding=binding, at_max_rate=load,
        workers=workers, gpus=workers * profile.tp,
    )


def plan(family: ProfileFamily, workload: Workload, headroom: float = 0.1, gpus_per_node: int = 8) -> Plan:
    """Evaluate every TP degree of `family` and choose the fewest GPUs (ties: lower TP)."""
    if headroom < 0 or gpus_per_node < 1:
        raise ValueError("need headroom >= 0 and gpus_per_node >= 1")
    options = []
    for tp in family.tps:
        profile = family.profile(tp)
        if tp > gpus_per_node:
            options.append(
                TPOption(tp, False, f"tp {tp} exceeds {gpus_per_node} GPUs per node", profile.kv.capacity_tokens)
            )
        else:
            options.append(plan_tp(profile, workload, headroom))
    usable = [o for o in options if o.usable]
    choice = min(usable, key=lambda o: (o.gpus, o.tp), default=None)
    return Plan(
        rate_per_s=workload.rate_per_s, slo_ttft_s=workload.slo_ttft_s, slo_atgt_s=workload.slo_atgt_s,
        headroom=headroom, gpus_per_node=gpus_per_node, choice=choice, options=options,
    )
