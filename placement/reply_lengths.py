"""How long a running reply may still be: the distribution of true reply lengths relative to
their predicted means, learned from finished requests (closed loop).

A reply predicted to average `m` tokens is modelled as L = m x R, with R drawn from the ratios
true / predicted of recently finished requests. That is what placement needs to ask "how
likely is this resident to end within [lo, hi) tokens, given it has already produced g?"
(`p_end_between`): a prefill stall breaks the ATGT SLO of a reply only if the reply is short
(see `placement.interference.stall_breaking_lengths`). Until enough requests have finished the
ratios come from a prior: a reference sample of reply lengths if one is known (the trace's, or
the predictor's training replies: a predictor that knew only their mean), else a log-normal.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable

import numpy as np
from scipy.stats import norm

from placement.rebalance import TAIL_GROWTH

# Ratios kept: the newest replace the oldest, so the distribution follows the workload.
SAMPLE_SIZE = 4096
# Finished requests needed before the prior is dropped.
MIN_OBSERVED = 256
# The sorted sample is rebuilt after this many new observations (sorting on every one would
# cost more than the decisions that read it).
RESORT_EVERY = 64
# Prior without a reference sample: log-normal ratios with this coefficient of variation, at
# this many evenly spaced quantiles (a reply length is typically as variable as its mean).
PRIOR_CV = 1.0
PRIOR_POINTS = 512


def _lognormal_ratios(cv: float, points: int) -> np.ndarray:
    """Evenly spaced quantiles of a log-normal with mean 1 and coefficient of variation `cv`."""
    sigma = math.sqrt(math.log1p(cv * cv))
    q = (np.arange(points) + 0.5) / points
    return np.exp(norm.ppf(q) * sigma - sigma * sigma / 2)


class ReplyLengths:
    """Ratios true / predicted reply length: a prior, then the newest `SAMPLE_SIZE` observed."""

    def __init__(self, prior_ratios: Iterable[float] | None = None, sample_size: int = SAMPLE_SIZE) -> None:
        prior = np.asarray(list(prior_ratios) if prior_ratios is not None else [], dtype=float)
        prior = prior[np.isfinite(prior) & (prior > 0)]
        self.prior = sorted(prior.tolist()) if prior.size else _lognormal_ratios(PRIOR_CV, PRIOR_POINTS).tolist()
        self.observed: deque[float] = deque(maxlen=sample_size)
        self._new = 0
        self._sorted = self.prior

    @classmethod
    def from_lengths(cls, lengths: Iterable[float]) -> ReplyLengths:
        """A prior from a reference sample of reply lengths, as if every prediction were their mean."""
        values = np.asarray(list(lengths), dtype=float)
        values = values[values > 0]
        return cls(values / values.mean() if values.size else None)

    def observe(self, predicted_mean: float, tokens: int) -> None:
        """A request predicted to average `predicted_mean` tokens finished with `tokens`."""
        if predicted_mean > 0 and tokens > 0:
            self.observed.append(tokens / predicted_mean)
            self._new += 1

    @property
    def ratios(self) -> list[float]:
        """The sorted ratios the probabilities are computed from (a list: placement reads it
        with `bisect`, which beats numpy on one value at a time)."""
        if self._new >= RESORT_EVERY or (self._new and len(self.observed) < MIN_OBSERVED):
            sample = list(self.observed)
            if len(sample) < MIN_OBSERVED:
                sample.extend(self.prior)
            self._sorted = sorted(sample)
            self._new = 0
        return self._sorted

    def p_end_between(self, predicted_mean: float, survived: float, lo: float, hi: float) -> float:
        """P(lo <= L < hi | L > survived), L the true length (tokens) of a reply predicted to
        average `predicted_mean` tokens. Lengths are whole tokens: the bounds are taken to the
        whole lengths they hold, each length L standing for the ratios that round to it.

        A reply longer than every ratio in the sample (relative to its prediction) is given the
        multiplicative tail error-aware rebalancing uses: uniform on (survived, TAIL_GROWTH x
        survived]."""
        if hi <= lo or math.isinf(lo):
            return 0.0
        hi = min(hi, 1e15)  # beyond any length (the tail's arithmetic stays finite)
        first, end = max(math.ceil(lo), math.floor(survived) + 1), math.ceil(hi)  # L in [first, end)
        if end <= first:
            return 0.0
        survived, lo, hi = math.floor(survived) + 0.5, first - 0.5, end - 0.5
        ratios = self.ratios
        scale = max(predicted_mean, 1e-9)
        done = bisect_right(ratios, survived / scale)  # ratios of replies shorter than survived
        alive = len(ratios) - done
        if alive == 0:
            width = max((TAIL_GROWTH - 1.0) * survived, 1.0)
            return max(0.0, min(hi, survived + width) - max(lo, survived)) / width
        ending = bisect_left(ratios, hi / scale) - max(bisect_left(ratios, lo / scale), done)
        return max(ending, 0) / alive
