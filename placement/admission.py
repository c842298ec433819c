"""SLO-aware admission: a request is admitted to a worker where it fits now; while none does it
waits, in SLO-ODBS order, in a queue bounded by count; once it can no longer meet its TTFT SLO
(or has waited `max_wait_s`) it is refused, so the server sheds what it cannot serve in time
instead of queueing it forever (llm-d's SLO admitter; Aladdin's "wait when infeasible").

"Fits" is the placement policy's own test, run with `on_infeasible="wait"`: KV, ATGT with the
newcomer, and TTFT. Only what waiting can fix is waited for: a request that would miss its SLOs
even on an idle worker by the hardware's profile (an SLO tighter than the hardware allows) is
placed at once by the cluster's own policy (least violation). Pure state, no clock or Ray: the
placement controller (placement.controller) and the simulator drive it.

A waiting request's last chance: when its deadline comes before the next drain (drains come
about as often as the recent ones did), the `last_chance` policy is asked too, which lets its
prefill stall the residents further (`PackingBudget.last_chance_risk`): refusing it is a sure
miss, which a smaller expected one on the residents beats. How much further is what the
target leaves unspent (`MissBudget`): over the recent requests the target allows a share of
misses; each refusal spends one, each last-chance placement what it was allowed to risk. Held
to the stall test alone, requests the baselines served in time were refused at light load
(BENCHMARKS.md, "Aladdin's refusals at light load"); under overload the refusals spend the
budget and admission sheds as before.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

from placement.attainment_feedback import WINDOW_MISSES
from placement.feasibility import check
from placement.packing_budget import edge_miss_rate
from placement.policy import Decision, PlacementPolicy
from placement.prefix_cache import hit_tokens
from placement.queue_order import WaitingQueue, make_queue_order
from placement.state import Request, WorkerState
from predictors.latency.profile import WorkerProfile

#: order of the waiting queue (UELLM's SLO-ODBS: TTFT deadline, then shorter replies first)
DEFAULT_QUEUE_ORDER = "slo-odbs"
_RATE_WINDOW_S = 10.0  # admissions counted over this long to estimate how fast the queue drains
_DIAGNOSED_WORKERS = 8  # a refusal names the tests the closest of this many workers failed
# ... at most this often (each diagnosis is up to _DIAGNOSED_WORKERS exact checks, ~1 ms at 16
# residents a worker: unbounded, an overload's refusals would take the actor's core)
_DIAGNOSIS_PERIOD_S = 0.1
_DRAIN_GAPS = 8  # the next drain is expected within the longest of this many recent gaps
_LATE = "its TTFT SLO cannot be met any more"


class AdmissionCluster(Protocol):
    """What admission drives: `placement.live.LiveCluster`, or the simulator's cluster."""

    @property
    def workers(self) -> Mapping[str, WorkerState]: ...

    def fleet_profile(self) -> WorkerProfile: ...

    def base_profile(self) -> WorkerProfile: ...

    def place(self, request: Request, candidates: Sequence[str], now_s: float,
              policy: PlacementPolicy | None = None) -> Decision: ...

    def place_waiting(self, queue: WaitingQueue, now_s: float, policy: PlacementPolicy | None = None,
                      worker_ids: Collection[str] | None = None) -> list[tuple[Request, Decision]]: ...

    def admit(self, worker_id: str, request: Request, now_s: float) -> None: ...


class MissBudget:
    """The SLO misses `target_attainment` leaves unspent over the last requests admission
    settled (about `WINDOW_MISSES` allowed over them; requests not yet seen count as met). A
    refusal spends one miss, a request placed at its last chance what it was allowed to risk."""

    def __init__(self, target_attainment: float) -> None:
        self.size = math.ceil(WINDOW_MISSES / (1.0 - target_attainment))
        self.allowed = (1.0 - target_attainment) * self.size
        self._spent: deque[float] = deque()
        self._total = 0.0

    @property
    def left(self) -> float:
        """Misses still unspent (0 once spent)."""
        return max(0.0, self.allowed - self._total)

    def spend(self, misses: float) -> None:
        """One more request settled, at the cost of `misses` (0 for an ordinary admission)."""
        self._spent.append(misses)
        self._total += misses
        if len(self._spent) > self.size:
            self._total -= self._spent.popleft()


@dataclass(frozen=True)
class AdmissionLimits:
    """Bounds of the waiting queue."""

    max_waiting: int = 256
    max_wait_s: float | None = None  # None: a request waits until its TTFT SLO is lost

    def __post_init__(self) -> None:
        if self.max_waiting < 0:
            raise ValueError("max_waiting must be >= 0")
        if self.max_wait_s is not None and self.max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")


@dataclass(frozen=True)
class Verdict:
    """What happened to one request: admitted to `worker_id` (None: to whichever worker the
    router picks, when placement knows no worker yet), or refused with a retry hint."""

    request_id: str
    worker_id: str | None = None
    refused: bool = False
    reason: str = ""
    retry_after_s: float = 0.0
    waited_s: float = 0.0  # since arrival
    queued: bool = False  # it waited in the admission queue

    @property
    def outcome(self) -> str:
        """refused, admitted_after_wait or admitted (the placement metric's label)."""
        return "refused" if self.refused else ("admitted_after_wait" if self.queued else "admitted")


class Admission:
    """Admits, queues or refuses requests over a cluster (see the module docstring)."""

    def __init__(
        self, cluster: AdmissionCluster, policy: PlacementPolicy, limits: AdmissionLimits = AdmissionLimits(),
        order: str = DEFAULT_QUEUE_ORDER, last_chance: PlacementPolicy | None = None,
    ) -> None:
        self.cluster = cluster
        self.policy = policy  # the cluster's policy in "wait" mode: None when nothing fits
        self.last_chance = last_chance  # the same for a request at its last chance (None: no such chance)
        self.limits = limits
        self.queue = WaitingQueue(make_queue_order(order))
        self._admitted_at: deque[float] = deque()
        self._drained_at: float | None = None
        self._drain_gaps: deque[float] = deque(maxlen=_DRAIN_GAPS)
        self.misses = MissBudget(policy.budget.target_attainment)
        self._diagnosed_at = -math.inf

    def deadline_s(self, request: Request) -> float:
        """The last moment `request` can start and still meet its TTFT SLO (by the profile, its
        prefill skipping the longest prefix a worker's cache holds)."""
        cached = self._best_cached_tokens(request)
        last = request.ttft_deadline_s - self.cluster.fleet_profile().ttft_s(request.input_len, cached_tokens=cached)
        if self.limits.max_wait_s is not None:
            last = min(last, request.arrival_s + self.limits.max_wait_s)
        return last

    def offer(self, request: Request, now_s: float) -> Verdict | None:
        """Admit `request` now, refuse it, or queue it (None: wait for `drain`)."""
        if not self.cluster.workers:
            return self._admitted(request, None, now_s)  # nothing known yet: do not block serving
        if now_s > self.deadline_s(request):
            idle = self._idle_worker()
            if idle is not None:  # the model says no, but an idle worker is its own test of that
                self.cluster.admit(idle, request, now_s)
                return self._admitted(request, idle, now_s)
            return self._refused(request, self._late_reason(request, now_s), now_s)
        if not self._fits_alone(request, now_s):  # waiting cannot help it: place it as best it can
            decision = self.cluster.place(request, list(self.cluster.workers), now_s)
            return self._admitted(request, None if decision.worker is None else decision.worker.id, now_s)
        if not len(self.queue):
            decision = self.cluster.place(request, list(self.cluster.workers), now_s, policy=self.policy)
            if decision.worker is not None:
                return self._admitted(request, decision.worker.id, now_s)
        if self._due(request, now_s):
            placed = self._place_last_chance(request, now_s)
            if placed is not None:
                return self._admitted(request, placed[0], now_s, risked=placed[1])
        if len(self.queue) >= self.limits.max_waiting:
            return self._refused(request, f"{len(self.queue)} requests are already waiting", now_s)
        self.queue.push(request, now_s)
        return None

    def _best_cached_tokens(self, request: Request) -> int:
        """Prompt tokens of `request` the best-placed worker's prefix cache holds (0 without
        prefix caching), found through the caches' directory."""
        prefix = request.prefix
        if prefix is None or not prefix.hashes:
            return 0
        cache = next((w.prefix_cache for w in self.cluster.workers.values() if w.prefix_cache is not None), None)
        if cache is None or cache.directory is None:
            return 0
        best = max((c.match(prefix) for c in cache.directory.caches(prefix.hashes[0])), default=0)
        return hit_tokens(best, prefix.block_tokens, request.input_len)

    def _idle_worker(self) -> str | None:
        """An accepting worker with nothing placed on it, if any: a request refused by the model
        alone is placed there instead, so a model that went wrong (a TTFT offset learned in a
        burst that is over) is measured again rather than refusing everything from then on."""
        return next((w.id for w in self.cluster.workers.values() if w.accepting and not w.residents), None)

    def _fits_alone(self, request: Request, now_s: float) -> bool:
        # The hardware's profile, not the closed loop's: corrections are learned on loaded
        # workers, and under overload they grew past what an idle worker does (a decode factor
        # of 7.5 where idle engines decoded at 1-2x), so every request "missed even alone", went
        # ahead unqueued, and the overload fed itself (BENCHMARKS.md, "Prefix cache", run 4)
        idle = WorkerState("idle", self.cluster.base_profile())
        return check(idle, request, now_s, self.policy.budget).feasible_apart_from_ttft

    def drain(self, now_s: float, worker_ids: Collection[str] | None = None) -> list[Verdict]:
        """Refuse waiting requests past their deadline, then admit, in queue order, those that
        fit now on `worker_ids` (None: on any worker). Returns a verdict for each request that
        left the queue."""
        verdicts = [self._refused(r, self._late_reason(r, now_s), now_s, queued=True)
                    for r in self.queue.remove_if(lambda r: now_s > self.deadline_s(r))]
        for request, decision in self.cluster.place_waiting(self.queue, now_s, self.policy, worker_ids):
            verdicts.append(self._admitted(request, decision.worker.id, now_s, queued=True))
        placed = set()
        for request in [r for r in self.queue if self._due(r, now_s)]:
            chance = self._place_last_chance(request, now_s)
            if chance is not None:
                placed.add(request.id)
                verdicts.append(self._admitted(request, chance[0], now_s, queued=True, risked=chance[1]))
        if placed:
            self.queue.remove_if(lambda r: r.id in placed)
        if self._drained_at is not None and math.isfinite(now_s - self._drained_at):
            self._drain_gaps.append(now_s - self._drained_at)
        self._drained_at = now_s
        return verdicts

    def _due(self, request: Request, now_s: float) -> bool:
        """Whether `request`'s deadline comes before the next drain is expected: its last
        chance (never without a `last_chance` policy)."""
        return self.last_chance is not None and now_s + max(self._drain_gaps, default=0.0) >= self.deadline_s(request)

    def _place_last_chance(self, request: Request, now_s: float) -> tuple[str, float] | None:
        """Place `request` where the `last_chance` policy fits it, risking at most the misses
        unspent (and less than the one its refusal is); (the worker, the risk), or None."""
        budget = self.policy.budget
        risk = min(1.0 - edge_miss_rate(budget.target_attainment), self.misses.left)
        if risk <= budget.stall_risk:  # nothing to risk beyond the ordinary test
            return None
        budget.last_chance_risk = risk
        decision = self.cluster.place(request, list(self.cluster.workers), now_s, policy=self.last_chance)
        return None if decision.worker is None else (decision.worker.id, risk)

    def _late_reason(self, request: Request, now_s: float) -> str:
        """Why `request` is refused as late: how long it waited and, for one refusal every
        `_DIAGNOSIS_PERIOD_S`, what kept it off the worker closest to fitting it now (the
        policy's own tests, of up to `_DIAGNOSED_WORKERS`)."""
        waited = f"{_LATE} (waited {(now_s - request.arrival_s) * 1e3:.0f} ms"
        if now_s - self._diagnosed_at < _DIAGNOSIS_PERIOD_S:
            return f"{waited})"
        self._diagnosed_at = now_s
        workers = list(islice(self.cluster.workers.values(), _DIAGNOSED_WORKERS))
        if not workers:
            return f"{waited}; no worker)"
        fits = [check(w, request, now_s, self.policy.budget) for w in workers]
        closest = min(fits, key=lambda f: (len(f.shortfalls()), f.violation))
        return f"{waited}; on the closest of {len(fits)} workers: {', '.join(closest.shortfalls()) or 'it fits now'})"

    def withdraw(self, request_id: str) -> bool:
        """Take a request out of the queue (its caller went away); True if it was waiting."""
        return bool(self.queue.remove_if(lambda r: r.id == request_id))

    def retry_after_s(self, now_s: float) -> float:
        """Seconds after which a refused client may expect room: the queue ahead divided by the
        recent admission rate, at least 1 s (HTTP's Retry-After is whole seconds)."""
        self._expire(now_s)
        rate = len(self._admitted_at) / _RATE_WINDOW_S
        if rate <= 0:
            return 1.0
        return float(max(1, math.ceil((len(self.queue) + 1) / rate)))

    def _admitted(self, request: Request, worker_id: str | None, now_s: float, queued: bool = False,
                  risked: float = 0.0) -> Verdict:
        self.misses.spend(risked)
        self._admitted_at.append(now_s)
        self._expire(now_s)
        return Verdict(request.id, worker_id, waited_s=max(0.0, now_s - request.arrival_s), queued=queued)

    def _refused(self, request: Request, reason: str, now_s: float, queued: bool = False) -> Verdict:
        self.misses.spend(1.0)
        return Verdict(request.id, refused=True, reason=reason, retry_after_s=self.retry_after_s(now_s),
                       waited_s=max(0.0, now_s - request.arrival_s), queued=queued)

    def _expire(self, now_s: float) -> None:
        while self._admitted_at and self._admitted_at[0] < now_s - _RATE_WINDOW_S:
            self._admitted_at.popleft()
