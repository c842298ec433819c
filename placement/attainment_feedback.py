"""Attainment feedback: the packing budget follows the attainment of finished requests.

Best fit packs workers to `PackingBudget.atgt_share` / `ttft_share` x the SLOs, so whatever the
latency model gets wrong shows up in the requests it promised to serve in time. Each finished
promise says at which share it would have met its SLO exactly: placed under share s, it took
`ratio` x its SLO, so (latency growing in proportion to how full its worker was packed) share
s / ratio would have put it at the SLO itself. (The TTFT, which is predicted per request, is
given at share 1 as the SLO plus the corrected model's error on it, over the SLO: what a
request predicted at the edge would have taken; see `placement.closed_loop`.) The share is
set to the p-quantile of that over the last `window` promises, p the SLO's part of the edge
miss rate
(`placement.packing_budget.edge_miss_rate`, halved between TTFT and ATGT): then a fraction p
of promises like the recent ones would miss. Nothing is integrated, so a burst of correlated
misses moves the share only as far as its own share of the window says, and the share comes
back as the window moves on; a model that is right gives ratios of about 1 at the edge and a
share of 1 (the SLO itself). Until `window` promises have finished, the missing ones count as
met exactly (a share of 1). Shares stay in [MIN_SHARE, 1].

Only promises count: a request placed where nothing fitted (least violation, the router's
fallback), one whose TTFT was already lost, and the requests sharing a worker with such an
overcommitted placement say nothing about the model (`Outcome`). So a cluster short of workers
does not drive the shares down; it shows as demand instead. The same object runs in the live
placement controller (outcomes measured by the ingress) and in the simulator (simulated).
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from dataclasses import dataclass

from placement.packing_budget import PackingBudget, edge_miss_rate

MIN_SHARE = 0.2
# Promises the quantile is taken over, in units of 1 / p: about this many misses at the edge
# rate are in the window, enough for a quantile that one unlucky request does not move.
WINDOW_MISSES = 10
SLOS = ("ttft", "atgt")


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished request for the feedback, per SLO: its latency over the SLO (`*_ratio`,
    None where placement did not promise that SLO, see the module docstring) and the share it
    was placed under."""

    ttft_ratio: float | None
    atgt_ratio: float | None
    ttft_share: float = 1.0
    atgt_share: float = 1.0
    ttft_missed: bool | None = None  # None: ttft_ratio > 1 (a ratio against the SLO itself)


class _ShareQuantile:
    """The p-quantile of the shares recent promises would have met their SLO at."""

    def __init__(self, p: float) -> None:
        self.p = p
        self.size = math.ceil(WINDOW_MISSES / p)
        self._fifo: deque[float] = deque()
        self._sorted: list[float] = []

    def add(self, share: float) -> float:
        self._fifo.append(share)
        insort(self._sorted, share)
        if len(self._fifo) > self.size:
            self._sorted.pop(bisect_left(self._sorted, self._fifo.popleft()))
        # promises not yet seen count as met at a share of 1 (above every share kept here)
        k = int(self.p * self.size)
        return self._sorted[k] if k < len(self._sorted) else 1.0


class AttainmentFeedback:
    """Sets `budget`'s shares from outcomes (unless the budget is fixed)."""

    def __init__(self, budget: PackingBudget, min_share: float = MIN_SHARE) -> None:
        if not 0.0 < min_share <= 1.0:
            raise ValueError("need 0 < min_share <= 1")
        self.budget = budget
        self.min_share = min_share
        p = edge_miss_rate(budget.target_attainment) / len(SLOS)
        self._quantiles = {slo: _ShareQuantile(p) for slo in SLOS}
        self.counted = 0  # outcomes with at least one promised SLO
        self.misses = {slo: 0 for slo in SLOS}  # promised SLOs missed

    def observe(self, outcome: Outcome) -> None:
        """Apply one finished request's outcome."""
        values = ((outcome.ttft_ratio, outcome.ttft_share), (outcome.atgt_ratio, outcome.atgt_share))
        promised = False
        for slo, (ratio, share) in zip(SLOS, values):
            if ratio is None:
                continue
            promised = True
            missed = outcome.ttft_missed if slo == "ttft" and outcome.ttft_missed is not None else ratio > 1.0
            self.misses[slo] += missed
            # a latency of 0 (a one-token reply has no ATGT) would have met any share
            would_meet = share / ratio if ratio > 0 else 1.0
            quantile = self._quantiles[slo].add(min(1.0, would_meet))
            if not self.budget.fixed:
                setattr(self.budget, f"{slo}_share", min(1.0, max(self.min_share, quantile)))
        self.counted += promised
