"""The heartbeat's minimal-worker estimate and the worker count a scaler should ask for.

`plan_workers` is the one rule the simulator's planner scaler and the placement controller
share: the planner's workers for a workload at the ATGT budget the policy packs to, raised to
hold the requests in flight (a backlog left by a burst or a warm-up would otherwise be served
at the steady-state count).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from placement.planning.arrival_window import ArrivalWindow
from placement.closed_loop import ClosedLoop
from placement.packing_budget import DEFAULT_TARGET_ATTAINMENT, edge_miss_rate
from placement.planning.planner import TPOption, Workload, plan_tp
from predictors.latency.profile import WorkerProfile


def plan_workers(
    profile: WorkerProfile, workload: Workload, headroom: float, atgt_margin: float, in_flight: int,
    token_budget: int | None = None,
) -> tuple[TPOption, int]:
    """The planner's option for `workload` with `atgt_margin` x its ATGT SLO (engines with
    chunked prefill at `token_budget`, or none), and the workers to run: its count, or more if
    the `in_flight` requests need them (0 if unusable)."""
    option = plan_tp(profile, replace(workload, slo_atgt_s=workload.slo_atgt_s * atgt_margin), headroom, token_budget)
    if not option.usable:
        return option, 0
    # requests one worker holds: its residents at the planner's rate, or the backlog it clears
    # within the TTFT SLO when prompts dominate, the SLO over its mean prefill (residents < 1
    # would count each request as a whole worker and overreact to a short queue)
    load = option.at_max_rate
    clears = workload.slo_ttft_s * load.rate_per_s / load.prefill_share if load.prefill_share > 0 else 1.0
    per_worker = max(load.residents, clears, 1.0)
    return option, max(option.workers, math.ceil(in_flight * (1 + headroom) / per_worker))


def overload_floor(current: int, placements: int, overcommitted: int, target_attainment: float) -> int:
    """Workers the last period's placements call for: when a share f of them, more than the
    edge miss rate, found no worker with room within the budget (they were overcommitted), the
    workers held fell short by about that share, so at least ceil(current x (1 + f)); 0 (no
    floor) otherwise. The planner's estimate lags a rising load (its window averages it); this
    is what placement itself saw."""
    if placements <= 0 or overcommitted / placements <= edge_miss_rate(target_attainment):
        return 0
    return math.ceil(current * (1 + overcommitted / placements))


@dataclass
class OverloadWatch:
    """`overload_floor` over the placements a `ClosedLoop` saw since the last look."""

    seen: tuple[int, int] = (0, 0)  # the loop's placements and overcommits at the last look

    def floor(self, loop: ClosedLoop, current: int) -> int:
        placed, overcommitted = loop.placements - self.seen[0], loop.overcommitted - self.seen[1]
        self.seen = (loop.placements, loop.overcommitted)
        return overload_floor(current, placed, overcommitted, loop.budget.target_attainment)


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
    atgt_margin: float = 1.0,
    in_flight: int = 0,
    token_budget: int | None = None,
    target_attainment: float = DEFAULT_TARGET_ATTAINMENT,
) -> WorkerEstimate:
    """`plan_workers` for the window's arrivals (0 workers with no arrivals)."""
    full = window.full(now_s)
    workload = window.workload(now_s, slo_ttft_s, slo_atgt_s, target_attainment)
    if workload is None:
        return WorkerEstimate(0, profile.tp, 0.0, 0.0, full, "no arrivals in the window")
    option, workers = plan_workers(profile, workload, headroom, atgt_margin, in_flight, token_budget)
    if not option.usable:
        # no rate meets the SLOs on this configuration: more workers would not help
        return WorkerEstimate(0, profile.tp, workload.rate_per_s, 0.0, full, option.reason, usable=False)
    reason = option.reason if workers == option.workers else f"{in_flight} requests in flight"
    return WorkerEstimate(workers, profile.tp, workload.rate_per_s, option.max_rate_per_worker, full, reason)


def scale_target(estimate: WorkerEstimate, current: int, min_workers: int, max_workers: int) -> int:
    """Workers to ask for: the estimate within [min, max], never fewer than `current` until
    the window has seen a whole period (a partial window under-counts demand). An unusable
    estimate (the SLOs cannot be met at any rate) keeps the current count."""
    want = estimate.workers if estimate.usable else current
    if not estimate.window_full:
        want = max(want, current)
    return min(max_workers, max(min_workers, want))
