"""Autoscaling loops the simulator can run every tick.

- `PlannerScaler` (Aladdin's heartbeat): the arrival rate and lengths of the last window go to
  the minimal-GPU planner (`placement.planner`), whose worker count for this TP is the target.
- `QueueLengthScaler` (Ray Serve's default rule): desired = ceil(ongoing requests / target
  ongoing requests per replica), clamped to [min, max]; a change up (down) is applied only
  after it has been asked for continuously for `upscale_delay_s` (`downscale_delay_s`), as
  Serve's autoscaler smooths decisions.

Workers added by either become available after the cluster's warm-up delay; removed ones drain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from placement.planner import Workload, plan_tp
from placement.simulator.cluster import ClusterView

AUTOSCALE_MODES = ("planner", "queue-length")


@dataclass
class PlannerScaler:
    """Workers for the recent load, from the planner's per-worker rate at this TP."""

    period_s: float = 10.0
    headroom: float = 0.1
    min_workers: int = 1
    max_workers: int = 1024
    min_arrivals: int = 10  # fewer arrivals in the window: keep the current count

    def tick(self, cluster: ClusterView) -> None:
        recent = cluster.recent_arrivals()
        if len(recent) < self.min_arrivals:
            return
        span = max(cluster.now_s - recent[0].request.arrival_s, 1e-9)
        # replies are known once finished; for the others the scaler has the estimate
        outputs = [r.output_len if not math.isnan(r.finish_s) else r.request.est_mean for r in recent]
        workload = Workload(
            rate_per_s=len(recent) / span,
            input_lens=np.array([r.request.input_len for r in recent]),
            output_lens=np.array(outputs),
            slo_ttft_s=recent[-1].request.slo_ttft_s,
            slo_atgt_s=recent[-1].request.slo_atgt_s,
        )
        option = plan_tp(cluster.profile, workload, self.headroom)
        if option.usable:
            cluster.scale_to(min(self.max_workers, max(self.min_workers, option.workers)))


@dataclass
class QueueLengthScaler:
    """Ray Serve's rule on ongoing requests per replica, with up/down delays."""

    target_ongoing_requests: float = 2.0
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


def make_autoscaler(mode: str, **options: float) -> PlannerScaler | QueueLengthScaler:
    """`planner` or `queue-length`, with that scaler's options."""
    if mode == "planner":
        return PlannerScaler(**options)  # type: ignore[arg-type]
    if mode == "queue-length":
        return QueueLengthScaler(**options)  # type: ignore[arg-type]
    raise ValueError(f"unknown autoscale mode {mode!r}; available: {', '.join(AUTOSCALE_MODES)}")
