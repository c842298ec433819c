"""The heartbeat's minimal-worker estimate and the worker count a scaler should ask for."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from placement.arrival_window import ArrivalWindow
from placement.planner import plan_tp
from predictors.latency.profile import WorkerProfile


@dataclass(frozen=True)
class WorkerEstimate:
    """Fewest workers (of one TP configuration) for the recent demand, and why."""

    workers: int
    tp: int
    rate_per_s: float
    per_worker_rate_per_s: float
    window_full: bool
    reason: str
    usable: bool = True  # False: no rate meets the SLOs on this configuration

    @property
    def gpus(self) -> int:
        return self.workers * self.tp

    def to_dict(self) -> dict:
        return asdict(self) | {"gpus": self.gpus}


def estimate_workers(
    window: ArrivalWindow,
    profile: WorkerProfile,
    now_s: float,
    slo_ttft_s: float,
    slo_atgt_s: float,
    headroom: float = 0.1,
) -> WorkerEstimate:
    """The planner's worker count for the window's arrivals (0 with no arrivals)."""
    full = window.full(now_s)
    workload = window.workload(now_s, slo_ttft_s, slo_atgt_s)
    if workload is None:
        return WorkerEstimate(0, profile.tp, 0.0, 0.0, full, "no arrivals in the window")
    option = plan_tp(profile, workload, headroom)
    if not option.usable:
        # no rate meets the SLOs on this configuration: more workers would not help
        return WorkerEstimate(0, profile.tp, workload.rate_per_s, 0.0, full, option.reason, usable=False)
    return WorkerEstimate(
        option.workers, profile.tp, workload.rate_per_s, option.max_rate_per_worker, full, option.reason
    )


def scale_target(estimate: WorkerEstimate, current: int, min_workers: int, max_workers: int) -> int:
    """Workers to ask for: the estimate within [min, max], never fewer than `current` until
    the window has seen a whole period (a partial window under-counts demand). An unusable
    estimate (the SLOs cannot be met at any rate) keeps the current count."""
    want = estimate.workers if estimate.usable else current
    if not estimate.window_full:
        want = max(want, current)
    return min(max_workers, max(min_workers, want))
