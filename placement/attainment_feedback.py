"""Attainment feedback: the packing budget follows the attainment of finished requests.

Best fit packs workers to `PackingBudget.atgt_share` / `ttft_share` x the SLOs. Whatever the
latency model gets wrong shows up as misses among the requests it promised to serve in time;
the shares move so that those misses settle at the budget's edge miss rate
(`placement.packing_budget.edge_miss_rate`): a stochastic approximation (Robbins-Monro) of the
share at which the promise holds, in log space. Every promised request that misses shrinks its
SLO's share by the factor exp(-STEP); every one that meets it grows the share by the factor
exp(STEP x p / (1 - p)), p the edge miss rate, so the shares stand still exactly when misses
happen at rate p. Steps are bounded (one request moves a share by at most STEP), old outcomes
fade as new ones arrive, and the shares stay in [MIN_SHARE, 1].

Only promises count: a request placed where nothing fitted (least violation, the router's
fallback), one whose TTFT was already lost, and the requests sharing a worker with such an
overcommitted placement say nothing about the model (`Outcome`). So a cluster short of workers
does not drive the shares down; it shows as demand instead. The same object runs in the live
placement controller (outcomes measured by the ingress) and in the simulator (simulated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from placement.packing_budget import PackingBudget, edge_miss_rate

# Log-share step per miss: 14 misses in a row halve a share; at a 0.5 % edge miss rate about
# 2,800 met promises double it back.
STEP = 0.05
MIN_SHARE = 0.2


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished request for the feedback: whether it met each SLO, None where placement
    did not promise that SLO (see the module docstring)."""

    ttft_met: bool | None
    atgt_met: bool | None


class AttainmentFeedback:
    """Moves `budget`'s shares from outcomes (unless the budget is fixed)."""

    def __init__(self, budget: PackingBudget, step: float = STEP, min_share: float = MIN_SHARE) -> None:
        if not 0.0 < step < 1.0 or not 0.0 < min_share <= 1.0:
            raise ValueError("need 0 < step < 1 and 0 < min_share <= 1")
        self.budget = budget
        self.step = step
        self.min_share = min_share
        self.counted = 0  # outcomes that moved a share
        self.misses = {"ttft": 0, "atgt": 0}

    def observe(self, outcome: Outcome) -> None:
        """Apply one finished request's outcome."""
        if self.budget.fixed:
            return
        if outcome.atgt_met is not None:
            self.budget.atgt_share = self._moved(self.budget.atgt_share, outcome.atgt_met)
            self.misses["atgt"] += not outcome.atgt_met
        if outcome.ttft_met is not None:
            self.budget.ttft_share = self._moved(self.budget.ttft_share, outcome.ttft_met)
            self.misses["ttft"] += not outcome.ttft_met
        if outcome.atgt_met is not None or outcome.ttft_met is not None:
            self.counted += 1

    def _moved(self, share: float, met: bool) -> float:
        p = edge_miss_rate(self.budget.target_attainment)
        log_step = self.step * p / (1.0 - p) if met else -self.step
        return min(1.0, max(self.min_share, share * math.exp(log_step)))
