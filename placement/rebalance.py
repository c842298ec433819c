"""Error-aware rebalancing: a request that outlives its predicted length gets its estimates
raised, conditional on having survived that long, so its worker's projected load (and with it
the policy's view of that worker) is corrected. Placed requests are never moved.

Rule (`SurvivalEstimator`): with L the output length of a reference sample (e.g. the trace's or
the predictor's training replies) and g the tokens generated so far,
  once g >= est_mean:          est_mean  <- max(est_mean, E[L | L > g])
  once g >= the upper tokens:  est_upper <- max(est_upper, q-quantile of L | L > g)
and est_upper >= est_mean always. Beyond the sample's longest reply (or with no sample) the
rule is multiplicative: both become g x `tail_growth`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from placement.state import WorkerState

# Beyond every reply of the reference sample, a reply that has produced g tokens is expected to
# reach g x TAIL_GROWTH (estimates) and taken to end uniformly before it (placement.reply_lengths).
TAIL_GROWTH = 1.5


class SurvivalEstimator:
    """Conditional mean and upper quantile of the output length given it exceeds g tokens."""

    def __init__(self, lengths: Iterable[float] = (), quantile: float = 0.9, tail_growth: float = TAIL_GROWTH) -> None:
        if not 0 < quantile < 1 or tail_growth <= 1:
            raise ValueError("need 0 < quantile < 1 and tail_growth > 1")
        self.lengths = np.sort(np.asarray(list(lengths), dtype=float))
        self.quantile = quantile
        self.tail_growth = tail_growth
        # suffix sums: the mean of lengths[i:] in O(1)
        self._suffix = np.concatenate([np.cumsum(self.lengths[::-1])[::-1], [0.0]])

    def conditional(self, generated: int) -> tuple[float, float]:
        """(E[L | L > generated], quantile of L | L > generated), each > generated."""
        i = int(np.searchsorted(self.lengths, generated, side="right"))
        left = len(self.lengths) - i
        if left == 0:
            grown = max(generated * self.tail_growth, generated + 1.0)
            return grown, grown
        mean = self._suffix[i] / left
        upper = self.lengths[i + min(left - 1, math.ceil(self.quantile * left) - 1)]
        return float(mean), float(max(upper, mean))


def on_progress(worker: WorkerState, request_id: str, estimator: SurvivalEstimator) -> bool:
    """Raise one resident's estimates if it has outlived them; True if they changed."""
    request = worker.residents[request_id].request
    generated = worker.generated(request_id)
    past_mean = generated >= request.est_mean
    past_upper = generated >= request.upper_output_tokens
    if not past_mean:
        return False
    cond_mean, cond_upper = estimator.conditional(generated)
    mean = max(request.est_mean, cond_mean)
    upper = max(request.est_upper, cond_upper) if past_upper else request.est_upper
    upper = max(upper, mean)
    if (mean, upper) == (request.est_mean, request.est_upper):
        return False
    worker.set_estimate(request_id, mean, upper)
    return True


def rebalance(worker: WorkerState, estimator: SurvivalEstimator) -> int:
    """Apply `on_progress` to every decoding resident (e.g. after a heartbeat); returns how
    many estimates were raised."""
    raised = 0
    steps = worker.steps
    for request_id, resident in list(worker.residents.items()):
        start = resident.decode_from_step
        if start is not None and steps - start >= resident.request.est_mean:
            raised += on_progress(worker, request_id, estimator)
    return raised
