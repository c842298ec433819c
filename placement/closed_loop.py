"""The closed loop around the SLO model: what placement promised each request, compared with
what happened to it.

On placement the loop records the promise (`placed`: which SLOs the decision promised, the
TTFT the worker's profile predicts, and how many overcommitted placements its worker had taken
so far); when the request finishes (`finished`: its measured TTFT, ATGT and length) it
- adds the reply's length, relative to its prediction, to the budget's `ReplyLengths`,
- feeds the TTFT error to the worker's latency correction,
- turns the outcome into an `Outcome` for `AttainmentFeedback`, counting an SLO only if it was
  promised and, for the ATGT, only if its worker took no overcommitted placement (least
  violation, a fallback) and no placement at its last chance (`Decision.risked`: the stall
  test relaxed by admission) while it was there: those break residents' promises, not the
  model's.
Workers' busy intervals (`busy`) go to `LatencyCorrection`, and the worker is then read
through its corrected profile. With prefix caching the prompt tokens placement expected the
worker's cache to hold are compared with what the engine reported it took from it
(`prefix_hits`, per worker): how good placement's picture of each cache is.

Pure state with no clock: the live placement controller drives it with what the ingress and
the workers measured, the simulator with simulated requests, so both adapt the same way.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from placement.attainment_feedback import AttainmentFeedback, Outcome
from placement.latency_correction import BusyInterval, LatencyCorrection
from placement.packing_budget import PackingBudget
from placement.policy import Decision
from placement.state import Request, WorkerState
from predictors.latency.profile import WorkerProfile

# Promises kept for requests not yet measured; beyond this the oldest go (a request whose
# measurement never comes, e.g. its client went away, must not be kept forever).
MAX_PROMISES = 100_000
# A request its worker reported ended keeps its promise this long for its timing (the ingress
# sends timings once a heartbeat period); past it none will come (the client went away, a call
# that bypassed the ingress) and the promise goes: thousands kept for nothing per second of
# traffic would each cost the actor's garbage collector a visit on every full collection.
TIMING_GRACE_S = 30.0


@dataclass(frozen=True, slots=True)
class _Promise:
    worker_id: str
    predicted_mean: float
    slo_ttft_s: float
    slo_atgt_s: float
    ttft: bool
    atgt: bool
    overcommits_seen: int
    atgt_share: float  # the budget's ATGT share when it was placed
    # what the TTFT check predicted, split so it can be re-predicted with the latency
    # correction as it is when the request finishes: wait + the engine part by the base profile
    waited_s: float
    engine_ttft_s: float
    arrival_s: float
    model_ttft_s: float  # the TTFT the worker's corrected profile predicted, from arrival
    input_len: int
    cached_tokens: int  # of its prompt, expected from the worker's prefix cache


@dataclass(slots=True)
class PrefixHits:
    """Prompt tokens of finished requests on one worker, those placement expected its prefix
    cache to hold, and those its engine reported taking from the cache."""

    prompt_tokens: int = 0
    predicted_tokens: int = 0
    engine_tokens: int = 0


class ClosedLoop:
    """Promises of placed requests and the feedback they drive (see the module docstring)."""

    def __init__(self, budget: PackingBudget, correction: LatencyCorrection | None = None) -> None:
        self.budget = budget
        self.feedback = AttainmentFeedback(budget)
        self.correction = correction if correction is not None else LatencyCorrection()
        self._promises: dict[str, _Promise] = {}
        self._ended: deque[tuple[float, str]] = deque()  # (when its worker reported it ended, request id)
        self._overcommits: dict[str, int] = {}  # worker id -> overcommitted placements taken
        self.placements = 0  # every placement seen, and those overcommitted for want of room
        self.overcommitted = 0  # (not `Decision.unfit`): a scaler's sign (placement.planning.worker_estimate)
        self._bases: dict[str, WorkerProfile] = {}  # worker id -> the profile its correction scales
        self.prefix_hits: dict[str, PrefixHits] = {}  # worker id -> its requests' prefix-cache hits

    def placed(self, request: Request, worker: WorkerState, decision: Decision, now_s: float) -> None:
        """`request` was placed (and admitted) on `worker` at `now_s` by `decision` (or without
        one: pass an infeasible Decision for a placement no policy checked, e.g. a fallback)."""
        worker_id = worker.id
        self.placements += 1
        if not decision.feasible or decision.risked:  # the residents' ATGT promises are off
            self.overcommitted += not decision.feasible and not decision.unfit
            self._overcommits[worker_id] = self._overcommits.get(worker_id, 0) + 1
        base = self._bases.get(worker_id, worker.profile)
        resident = worker.residents.get(request.id)
        cached = 0 if resident is None else resident.cached_tokens  # the part of its prompt cached there
        self._promises.pop(request.id, None)  # placed again (a retried routing): the newest counts
        if len(self._promises) >= MAX_PROMISES:
            del self._promises[next(iter(self._promises))]
        self._promises[request.id] = _Promise(
            worker_id, request.pred_mean, request.slo_ttft_s, request.slo_atgt_s,
            ttft=decision.feasible and not decision.ttft_lost, atgt=decision.feasible,
            overcommits_seen=self._overcommits.get(worker_id, 0),
            atgt_share=self.budget.atgt_share,
            waited_s=now_s - request.arrival_s,
            # the TTFT check's own formula without the serving path: the prefill queued ahead
            # of it, then its own
            engine_ttft_s=(worker.model_ttft_s(request.input_len, base, queued_itself=request.sequences, cached_tokens=cached)
                           - base.serving_overhead_s),
            arrival_s=request.arrival_s,
            model_ttft_s=now_s - request.arrival_s + worker.model_ttft_s(request.input_len, queued_itself=request.sequences,
                                                                         cached_tokens=cached),
            input_len=request.input_len, cached_tokens=cached,
        )

    def busy(self, worker: WorkerState, interval: BusyInterval, base: WorkerProfile) -> None:
        """`worker` spent `interval` working; its latency correction (relative to `base`, the
        profile it started from) moves, and the worker is read through the corrected profile."""
        self._bases[worker.id] = base
        self.correction.observe(worker.id, interval)
        worker.set_profile(self.profile_for(worker.id, base))

    def refresh(self, worker: WorkerState, base: WorkerProfile, now_s: float) -> None:
        """Bring what placement reads of `worker` up to date at `now_s` without new work: its
        corrected profile (the fleet's until it has its own) and its queue's lateness."""
        worker.set_profile(self.profile_for(worker.id, base))
        worker.set_queue_lateness(self.queue_lateness(worker, now_s))

    def queue_lateness(self, worker: WorkerState, now_s: float) -> float:
        """How far behind the TTFT model the requests waiting in `worker`'s queue are: the most,
        over them, of their age now over the TTFT predicted for them (1 when none is late).
        A live signal, ahead of any completion: a burst that slows the host shows here while
        the requests it delays are still waiting."""
        late = 1.0
        for request_id, resident in worker.residents.items():
            if resident.decode_from_step is None:
                promise = self._promises.get(request_id)
                if promise is not None and promise.model_ttft_s > 0:
                    late = max(late, (now_s - promise.arrival_s) / promise.model_ttft_s)
        return late

    def profile_for(self, worker_id: str, base: WorkerProfile) -> WorkerProfile:
        """The profile a worker is read through: its own correction once it has reported work,
        the fleet's until then (a worker no request has reached yet is no faster than the rest)."""
        own = self.correction.workers.get(worker_id)
        if own is not None and own.intervals:
            return self.correction.profile_for(worker_id, base)
        return self.correction.fleet_profile(base)

    def finished(self, request_id: str, ttft_s: float, atgt_s: float, output_tokens: int,
                 cached_tokens: int | None = None) -> Outcome | None:
        """A placed request ended with these measurements (`cached_tokens`: of its prompt, what
        the engine took from its prefix cache, when it says); returns the outcome fed back
        (None for a request this loop did not see placed)."""
        promise = self._promises.pop(request_id, None)
        if promise is None:
            return None
        if cached_tokens is not None:
            hits = self.prefix_hits.setdefault(promise.worker_id, PrefixHits())
            hits.prompt_tokens += promise.input_len
            hits.predicted_tokens += promise.cached_tokens
            hits.engine_tokens += cached_tokens
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
        # TTFT: the corrected model's error on this request (what the TTFT share must absorb at
        # the edge), not the SLO's: else a cold start's misses, which the correction has since
        # learned, would count twice. The correction takes out the part proportional to the
        # work (a slow host), so what is left is a delay, carried to the edge as one: a request
        # predicted at the SLO would have taken the SLO plus it (a 50 ms prediction served in
        # 120 ms says 70 ms, not that every TTFT is 2.4x). ATGT: against the budget it was
        # packed to (its latency depends on what was placed after it, which no prediction at
        # placement holds).
        outcome = Outcome(
            ttft_ratio=1.0 + (ttft_s - predicted) / promise.slo_ttft_s if promise.ttft else None,
            atgt_ratio=atgt_s / promise.slo_atgt_s if promise.atgt and clean else None,
            ttft_share=1.0, atgt_share=promise.atgt_share,
            ttft_missed=promise.ttft and ttft_s > promise.slo_ttft_s,
        )
        self.feedback.observe(outcome)
        return outcome

    @property
    def pending(self) -> int:
        """Promises waiting for their requests' timings."""
        return len(self._promises)

    def ended(self, request_id: str, now_s: float) -> None:
        """`request_id`'s worker reported at `now_s` that it ended: its timing is due within
        `TIMING_GRACE_S` (`expire`)."""
        if request_id in self._promises:
            self._ended.append((now_s, request_id))

    def expire(self, now_s: float) -> None:
        """Drop the promises of requests that ended more than `TIMING_GRACE_S` before `now_s`
        and never got their timing."""
        horizon = now_s - TIMING_GRACE_S
        while self._ended and self._ended[0][0] < horizon:
            self._promises.pop(self._ended.popleft()[1], None)

    def dropped(self, request_id: str) -> None:
        """A placed request ended without measurements (cancelled, failed): forget its promise."""
        self._promises.pop(request_id, None)

    def forget_worker(self, worker_id: str) -> None:
        """A worker is gone: its counter and correction go (its requests are dropped one by one)."""
        self._overcommits.pop(worker_id, None)
        self._bases.pop(worker_id, None)
        self.prefix_hits.pop(worker_id, None)
        self.correction.forget(worker_id)
