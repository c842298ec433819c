"""Serve autoscaling policy for the worker deployment: the placement actor's worker target.

The placement actor turns recent demand into a minimal-worker estimate (placement.planning.worker_estimate)
and hands it to every worker in its heartbeat reply; workers report it to Serve's controller
through `record_autoscaling_stats`, and this policy returns it. Serve's wrapper around custom
policies applies min/max replicas, the up/down delays and the cold start from zero.
"""

from __future__ import annotations

import math
from typing import Any

from ray.serve.config import AutoscalingContext

TARGET_METRIC = "aladdin_target_workers"


def aladdin_autoscaling_policy(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
    """Workers wanted: the highest target any replica reported over the look-back window
    (they all relay the same actor; the highest is the most recent on a rise), or no change
    while none has reported one."""
    reported = (ctx.aggregated_metrics or {}).get(TARGET_METRIC) or {}
    if not reported:
        return ctx.target_num_replicas, ctx.policy_state
    return math.ceil(max(reported.values())), ctx.policy_state
