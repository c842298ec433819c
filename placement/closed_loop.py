"""The closed loop around the SLO model: what placement promised each request, compared with
what happened to it.

On placement the loop records the promise (`placed`: which SLOs the decision promised, the
TTFT the worker's profile predicts, and how many overcommitted placements its worker had taken
so far); when the request finishes (`finished`: its measured TTFT, ATGT and length) it
- adds the reply's length, relative to its prediction, to the budget's `ReplyLengths`,
- feeds the TTFT error to the worker's latency correction,
- turns the outcome into an `Outcome` for `AttainmentFeedback`, counting an SLO only if it was
  promised and, for the ATGT, only if its worker took no overcommitted placement (least
  violation, a fallback) while it was there: those break residents' promises, not the model's.
Workers' busy intervals (`busy`) go to `LatencyCorrection`, and the worker is then read
through its corrected profile.

Pure state with no clock: the live placement controller drives it with what the ingress and
the workers measured, the simulator with simulated requests, so both adapt the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

# Promises kept for requests not yet measured; beyond this the oldest go (a request whose
# measurement never comes, e.g. its client went away, must not be kept forever).
MAX_PROMISES = 100_000

from placement.attainment_feedback import AttainmentFeedback, Outcome
from placement.latency_correction import BusyInterval, LatencyCorrection
from placement.packing_budget import PackingBudget
from placement.policy import Decision
from placement.state import Request, WorkerState
from predictors.latency.profile import WorkerProfile


@dataclass(frozen=True, slots=True)
class _Promise:
    worker_id: str
    predicted_mean: float
    slo_ttft_s: float
    slo_atgt_s: float
    ttft: bool
    atgt: bool
    overcommits_seen: int
    ttft_share: float  # the budget's shares when it was placed
    atgt_share: float
    # what the TTFT check predicted, split so it can be re-predicted with the latency
    # correction as it is when the request finishes: wait + the engine part by the base profile
    waited_s: float
    engine_ttft_s: float


class ClosedLoop:
    """Promises of placed requests and the feedback they drive (see the module docstring)."""

    def __init__(self, budget: PackingBudget, correction: LatencyCorrection | None = None) -> None:
        self.budget = budget
        self.feedback = AttainmentFeedback(budget)
        self.correction = correction if correction is not None else LatencyCorrection()
        self._promises: dict[str, _Promise] = {}
        self._overcommits: dict[str, int] = {}  # worker id -> overcommitted placements taken
        self.placements = 0  # every placement seen, and those that overcommitted: a scaler's
        self.overcommitted = 0  # sign that no worker had room (placement.worker_estimate)
        self._bases: dict[str, WorkerProfile] = {}  # worker id -> the profile its correction scales

    def placed(self, request: Request, worker: WorkerState, decision: Decision, now_s: float) -> None:
        """`request` was placed (and admitted) on `worker` at `now_s` by `decision` (or without
        one: pass an infeasible Decision for a placement no policy checked, e.g. a fallback)."""
        worker_id = worker.id
        self.placements += 1
        if not decision.feasible:
            self.overcommitted += 1
            self._overcommits[worker_id] = self._overcommits.get(worker_id, 0) + 1
        base = self._bases.get(worker_id, worker.profile)
        self._promises.pop(request.id, None)  # placed again (a retried routing): the newest counts
        if len(self._promises) >= MAX_PROMISES:
            del self._promises[next(iter(self._promises))]
        self._promises[request.id] = _Promise(
            worker_id, request.pred_mean, request.slo_ttft_s, request.slo_atgt_s,
            ttft=decision.feasible and not decision.ttft_lost, atgt=decision.feasible,
            overcommits_seen=self._overcommits.get(worker_id, 0),
            ttft_share=self.budget.ttft_share, atgt_share=self.budget.atgt_share,
            waited_s=now_s - request.arrival_s,
            # the TTFT check's own formula without the serving path: the prefill queued ahead
            # of it, then its own
            engine_ttft_s=worker.ttft_s(request.input_len, base, queued_itself=True) - base.serving_overhead_s,
        )

    def busy(self, worker: WorkerState, interval: BusyInterval, base: WorkerProfile) -> None:
        """`worker` spent `interval` working; its latency correction (relative to `base`, the
        profile it started from) moves, and the worker is read through the corrected profile."""
        self._bases[worker.id] = base
        self.correction.observe(worker.id, interval)
        worker.set_profile(self.correction.profile_for(worker.id, base))

    def finished(self, request_id: str, ttft_s: float, atgt_s: float, output_tokens: int) -> Outcome | None:
        """A placed request ended with these measurements; returns the outcome fed back (None
        for a request this loop did not see placed)."""
        promise = self._promises.pop(request_id, None)
        if promise is None:
            return None
        if self.budget.replies is not None:
            self.budget.replies.observe(promise.predicted_mean, output_tokens)
        worker = self.correction.of(promise.worker_id)
        base = self._bases.get(promise.worker_id)
        overhead = worker.ttft_offset_s + (0.0 if base is None else base.serving_overhead_s)
        # re-predicted with today's prefill factor, so the offset learns only what the factor
        # (fitted to busy time) does not explain: the serving path outside the engine
        predicted = promise.waited_s + worker.prefill_factor * promise.engine_ttft_s + overhead
        worker.observe_ttft(ttft_s - predicted)
        clean = self._overcommits.get(promise.worker_id, 0) == promise.overcommits_seen
        outcome = Outcome(
            ttft_ratio=ttft_s / promise.slo_ttft_s if promise.ttft else None,
            atgt_ratio=atgt_s / promise.slo_atgt_s if promise.atgt and clean else None,
            ttft_share=promise.ttft_share, atgt_share=promise.atgt_share,
        )
        self.feedback.observe(outcome)
        return outcome

    def dropped(self, request_id: str) -> None:
        """A placed request ended without measurements (cancelled, failed): forget its promise."""
        self._promises.pop(request_id, None)

    def forget_worker(self, worker_id: str) -> None:
        """A worker is gone: its counter and correction go (its requests are dropped one by one)."""
        self._overcommits.pop(worker_id, None)
        self._bases.pop(worker_id, None)
        self.correction.forget(worker_id)
