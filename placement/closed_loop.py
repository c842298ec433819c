"""The closed loop around the SLO model: what placement promised each request, compared with
what happened to it.

On placement the loop records the promise (`placed`: which SLOs the decision promised, and how
many overcommitted placements its worker had taken so far); when the request finishes
(`finished`: its measured TTFT, ATGT and length) it
- adds the reply's length, relative to its prediction, to the budget's `ReplyLengths`,
- turns the outcome into an `Outcome` for `AttainmentFeedback`, counting an SLO only if it was
  promised and, for the ATGT, only if its worker took no overcommitted placement (least
  violation, a fallback) while it was there: those break residents' promises, not the model's.

Pure state with no clock: the live placement controller drives it with what the ingress and
the workers measured, the simulator with simulated requests, so both adapt the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from placement.attainment_feedback import AttainmentFeedback, Outcome
from placement.packing_budget import PackingBudget
from placement.policy import Decision
from placement.state import Request


@dataclass(frozen=True, slots=True)
class _Promise:
    worker_id: str
    predicted_mean: float
    slo_ttft_s: float
    slo_atgt_s: float
    ttft: bool
    atgt: bool
    overcommits_seen: int


class ClosedLoop:
    """Promises of placed requests and the feedback they drive (see the module docstring)."""

    def __init__(self, budget: PackingBudget) -> None:
        self.budget = budget
        self.feedback = AttainmentFeedback(budget)
        self._promises: dict[str, _Promise] = {}
        self._overcommits: dict[str, int] = {}  # worker id -> overcommitted placements taken

    def placed(self, request: Request, worker_id: str, decision: Decision) -> None:
        """`request` was placed on `worker_id` by `decision` (or without one: pass an
        infeasible Decision for a placement no policy checked, e.g. a router fallback)."""
        if not decision.feasible:
            self._overcommits[worker_id] = self._overcommits.get(worker_id, 0) + 1
        self._promises[request.id] = _Promise(
            worker_id, request.pred_mean, request.slo_ttft_s, request.slo_atgt_s,
            ttft=decision.feasible and not decision.ttft_lost, atgt=decision.feasible,
            overcommits_seen=self._overcommits.get(worker_id, 0),
        )

    def finished(self, request_id: str, ttft_s: float, atgt_s: float, output_tokens: int) -> Outcome | None:
        """A placed request ended with these measurements; returns the outcome fed back (None
        for a request this loop did not see placed)."""
        promise = self._promises.pop(request_id, None)
        if promise is None:
            return None
        if self.budget.replies is not None:
            self.budget.replies.observe(promise.predicted_mean, output_tokens)
        clean = self._overcommits.get(promise.worker_id, 0) == promise.overcommits_seen
        outcome = Outcome(
            ttft_met=ttft_s <= promise.slo_ttft_s if promise.ttft else None,
            atgt_met=atgt_s <= promise.slo_atgt_s if promise.atgt and clean else None,
        )
        self.feedback.observe(outcome)
        return outcome

    def dropped(self, request_id: str) -> None:
        """A placed request ended without measurements (cancelled, failed): forget its promise."""
        self._promises.pop(request_id, None)

    def forget_worker(self, worker_id: str) -> None:
        """A worker is gone: its counter goes (its requests are dropped one by one)."""
        self._overcommits.pop(worker_id, None)
