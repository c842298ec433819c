"""Autoscaling loops the simulator can run every tick.

- `PlannerScaler` (Aladdin's heartbeat): the arrival rate and lengths of the last window go to
  the minimal-GPU planner (`placement.planning.planner`) at the ATGT budget the placement policy packs
  to; its worker count for this TP, raised to hold the requests now in flight and, when
  placements since the last tick found no worker with room, by that share (`overload_floor`),
  is the target.
  Up at once (a worker added now still warms up), down only once the window is full and only
  to the largest target of the last `downscale_delay_s`.
- `QueueLengthScaler` (Ray Serve's default rule): desired = ceil(ongoing requests / target
  ongoing requests per replica), clamped to [min, max]; a change up (down) is applied only
  after it has been asked for continuously for `upscale_delay_s` (`downscale_delay_s`), as
  Serve's autoscaler smooths decisions.

Workers added by either become available after the cluster's warm-up delay; removed ones drain.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from placement.closed_loop import ClosedLoop
from placement.packing_budget import DEFAULT_TARGET_ATTAINMENT
from placement.planning.planner import Workload
from placement.simulator.cluster import ClusterView
from placement.simulator.metrics import RequestRecord
from placement.planning.worker_estimate import OverloadWatch, plan_workers

AUTOSCALE_MODES = ("planner", "queue-length")
# Target ongoing requests per replica of the queue-length rule. Serve's generic default, 2, is
# far below what a continuous-batching engine serves within these SLOs (96 TP-1 workers at peak
# where 8 meet 0.99 at fixed size), and Ray Serve LLM's default (ray 2.60:
# DEFAULT_MAX_TARGET_ONGOING_REQUESTS = 1e9 in ray/llm/_internal/serve/constants.py) turns
# load-driven scaling off. 8 is the largest value of a 4-32 sweep with which p2c keeps >= 0.99
# attainment in every capacity run where any target does (BENCHMARKS.md, "Autoscaler
# fairness"): the baseline at its cheapest without giving up the target.
DEFAULT_TARGET_ONGOING_REQUESTS = 8.0


def _reply_tokens(record: RequestRecord) -> float:
    """The reply length the scaler can know: the true one once finished, else the current
    estimate (which error-aware rebalancing raises as the reply outlives it). Leaving the
    unfinished out would keep only the short replies of a young window."""
    if not math.isnan(record.finish_s):
        return record.output_len
    return record.request.est_mean


@dataclass
class PlannerScaler:
    """Workers for the recent load, from the planner's per-worker rate at this TP.

    `loop` is Aladdin's closed loop (None: the SLOs themselves and the profile as is): at each
    tick the planner plans for the share of the ATGT SLO the budget packs a worker to and for
    the workers' corrected latencies; `scenario.run` passes it. `token_budget`: the engines'
    tokens per iteration with chunked prefill (None: prefill-first).
    """

    period_s: float = 10.0
    headroom: float = 0.1
    min_workers: int = 1
    max_workers: int = 1024
    min_arrivals: int = 10  # fewer arrivals in the window: keep the current count
    loop: ClosedLoop | None = None
    token_budget: int | None = None
    # one arrival window: shrinking sooner than a worker takes to come back (warm-up) thrashes,
    # and 60 s cost less than 120 s or 300 s at equal attainment (BENCHMARKS.md)
    downscale_delay_s: float = 60.0
    _wishes: deque[tuple[float, int]] = field(default_factory=deque, init=False)
    _overload: OverloadWatch = field(default_factory=OverloadWatch, init=False)

    def target(self, cluster: ClusterView) -> int | None:
        """The planner's workers for the window's load, or None when it cannot tell (too few
        arrivals, or no rate meets the SLOs)."""
        recent = cluster.recent_arrivals()
        if len(recent) < self.min_arrivals:
            return None
        # the time the window covers (the run starts at 0): a partial window's rate is not
        # diluted by the part before the start
        span = max(min(cluster.now_s, cluster.arrival_window_s), 1e-9)
        loop = self.loop
        workload = Workload(
            rate_per_s=len(recent) / span,
            input_lens=np.array([r.request.input_len for r in recent]),
            output_lens=np.array([_reply_tokens(r) for r in recent]),
            slo_ttft_s=recent[-1].request.slo_ttft_s,
            slo_atgt_s=recent[-1].request.slo_atgt_s,
            target_attainment=DEFAULT_TARGET_ATTAINMENT if loop is None else loop.budget.target_attainment,
            arrival_s=np.array([r.request.arrival_s for r in recent]),
        )
        share = 1.0 if loop is None else loop.budget.atgt_share
        profile = cluster.profile if loop is None else loop.correction.fleet_profile(cluster.profile)
        option, workers = plan_workers(profile, workload, self.headroom, share, cluster.ongoing_requests(),
                                       self.token_budget)
        if not option.usable:
            return None
        if loop is not None:
            workers = max(workers, self._overload.floor(loop, cluster.active_workers))
        return min(self.max_workers, max(self.min_workers, workers))

    def tick(self, cluster: ClusterView) -> None:
        wish = self.target(cluster)
        if wish is None:
            return
        now = cluster.now_s
        self._wishes.append((now, wish))
        while self._wishes and self._wishes[0][0] < now - self.downscale_delay_s:
            self._wishes.popleft()
        current = cluster.active_workers
        if wish > current:
            cluster.scale_to(wish)
        elif now >= cluster.arrival_window_s:
            # a partial window has seen only the replies short enough to finish: never shrink on it
            hold = max(w for _, w in self._wishes)
            if hold < current:
                cluster.scale_to(hold)


@dataclass
class QueueLengthScaler:
    """Ray Serve's rule on ongoing requests per replica, with up/down delays."""

    target_ongoing_requests: float = DEFAULT_TARGET_ONGOING_REQUESTS
    period_s: float = 10.0
    min_workers: int = 1
    max_workers: int = 1024
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    _asked: int | None = field(default=None, init=False)
    _asked_since_s: float = field(default=0.0, init=False)

    def tick(self, cluster: ClusterView) -> None:
        desired = math.ceil(cluster.ongoing_requests() / self.target_ongoing_requests)
        desired = min(self.max_workers, max(self.min_workers, desired))
        current = cluster.active_workers
        if desired == current:
            self._asked = None
            return
        if self._asked is None or (desired > current) != (self._asked > current):
            self._asked, self._asked_since_s = desired, cluster.now_s
        self._asked = desired
        delay = self.upscale_delay_s if desired > current else self.downscale_delay_s
        if cluster.now_s - self._asked_since_s >= delay:
            cluster.scale_to(desired)
            self._asked = None


def make_autoscaler(mode: str, **options: Any) -> PlannerScaler | QueueLengthScaler:
    """`planner` or `queue-length`, with that scaler's options."""
    if mode == "planner":
        return PlannerScaler(**options)  # type: ignore[arg-type]
    if mode == "queue-length":
        return QueueLengthScaler(**options)  # type: ignore[arg-type]
    raise ValueError(f"unknown autoscale mode {mode!r}; available: {', '.join(AUTOSCALE_MODES)}")
