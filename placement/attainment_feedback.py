"""Attainment feedback: the packing budget follows the attainment of finished requests.

Best fit packs workers to `PackingBudget.atgt_share` / `ttft_share` x the SLOs. Whatever the
latency model gets wrong shows up as misses among the requests it promised to serve in time;
the shares move so that those misses settle at the budget's edge miss rate
(`placement.packing_budget.edge_miss_rate`): a stochastic approximation (Robbins-Monro) of the
share at which the promise holds, in log space. Every promised request that misses shrinks its
SLO's share by the factor exp(-STEP); every one that meets it grows the share by the factor
exp(STEP x p / (1 - p)), p the edge miss rate, so the shares stand still exactly when misses
happen at rate p. Steps are bounded (one request moves a share by at most STEP, and only a
request placed under the current share can shrink it: see `AttainmentFeedback`), old
outcomes fade as new ones arrive, and the shares stay in [MIN_SHARE, 1].

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

# Log-share step per counted miss (about 14 halve a share); at a 0.5 % edge miss rate about
# 2,800 met promises double it back.
STEP = 0.05
MIN_SHARE = 0.2
SLOS = ("ttft", "atgt")


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished request for the feedback: whether it met each SLO (None where placement did
    not promise that SLO, see the module docstring), and the share generation (`generation`)
    each promise was made under."""

    ttft_met: bool | None
    atgt_met: bool | None
    generation: tuple[int, int] = (0, 0)  # (ttft, atgt) at placement


class AttainmentFeedback:
    """Moves `budget`'s shares from outcomes (unless the budget is fixed).

    A miss shrinks a share only if its request was placed under the share as it is now (its
    generation is current): requests placed before the last shrink could not benefit from it,
    so a burst of misses that all come from one overload moves a share once, not once per
    request, and the shares cannot collapse on correlated misses. Each shrink starts a new
    generation. Met promises grow the shares whatever their generation."""

    def __init__(self, budget: PackingBudget, step: float = STEP, min_share: float = MIN_SHARE) -> None:
        if not 0.0 < step < 1.0 or not 0.0 < min_share <= 1.0:
            raise ValueError("need 0 < step < 1 and 0 < min_share <= 1")
        self.budget = budget
        self.step = step
        self.min_share = min_share
        self.generation = {slo: 0 for slo in SLOS}
        self.counted = 0  # outcomes with at least one promised SLO
        self.misses = {slo: 0 for slo in SLOS}  # promised SLOs missed (counted or not)

    def current(self) -> tuple[int, int]:
        """The (ttft, atgt) generations a placement made now is under."""
        return self.generation["ttft"], self.generation["atgt"]

    def observe(self, outcome: Outcome) -> None:
        """Apply one finished request's outcome."""
        if self.budget.fixed:
            return
        for slo, met, generation in zip(SLOS, (outcome.ttft_met, outcome.atgt_met), outcome.generation):
            if met is None:
                continue
            share = getattr(self.budget, f"{slo}_share")
            if met:
                p = edge_miss_rate(self.budget.target_attainment)
                share *= math.exp(self.step * p / (1.0 - p))
            else:
                self.misses[slo] += 1
                if generation != self.generation[slo]:
                    continue
                share *= math.exp(-self.step)
                self.generation[slo] += 1
            setattr(self.budget, f"{slo}_share", min(1.0, max(self.min_share, share)))
        if outcome.atgt_met is not None or outcome.ttft_met is not None:
            self.counted += 1
