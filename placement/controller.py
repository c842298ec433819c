"""The placement controller of a live cluster: everything the serving placement actor decides,
as pure state driven by calls that carry their own clock (`now_s`).

It holds the `LiveCluster` (workers and residents as their reports say), SLO-aware admission
(aladdin), the closed loop of the SLO model (promises, latency correction, attainment
feedback: inside the cluster), worker liveness, and the arrival window behind the
minimal-worker estimate with its scaling log. Every call returns typed results; the Ray adapter
(`serve_app.scheduler.placement_actor`) only turns them into futures, metrics and resource requests.

Liveness: a worker is seen when it reports or is a routing candidate; one silent for
`STALE_HEARTBEATS` heartbeat periods is presumed gone (Serve replaced it) and forgotten with
its residents; one whose request failed is a suspect, skipped by routing until it reports again.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from placement.admission import Admission, AdmissionLimits, Verdict
from placement.closed_loop import PrefixHits
from placement.latency_correction import WorkerCorrection
from placement.planning.arrival_window import ArrivalWindow
from placement.live import LiveCluster, RequestTiming, RunningRequest, WorkerReport
from placement.packing_budget import DEFAULT_TARGET_ATTAINMENT
from placement.path_delay import PathDelay
from placement.policies.registry import make_policies
from placement.sharding import ShardSummary, summarize
from placement.planning.worker_estimate import OverloadWatch, WorkerEstimate, estimate_workers, scale_target
from predictors.latency.profile import WorkerProfile

# A worker silent for this many heartbeat periods is presumed gone (Serve replaced it).
STALE_HEARTBEATS = 40
# Recent decisions kept for `decisions` (request id -> worker id), for inspection and tests.
RECENT_DECISIONS = 10_000
SCALING_LOG = 100  # changes of the estimate kept for `stats`


@dataclass(frozen=True)
class ScalingSettings:
    """How the minimal-worker estimate is made and bounded."""

    window_s: float = 60.0  # sliding window of arrivals the planner sees
    estimate_period_s: float = 5.0
    headroom: float = 0.1
    min_workers: int = 1
    max_workers: int = 8


@dataclass(frozen=True)
class ControllerSettings:
    """What the controller is configured with (the serving config's placement part)."""

    policy: str
    profile: WorkerProfile
    slo_ttft_s: float
    slo_atgt_s: float
    heartbeat_s: float = 0.25
    seed: int = 0
    target_attainment: float = DEFAULT_TARGET_ATTAINMENT
    atgt_margin: float | None = None  # aladdin, expert override of the adaptive budget
    admission: AdmissionLimits | None = None  # None: no SLO-aware admission
    token_budget: int | None = None  # the engines' tokens per iteration (chunked prefill)
    prefix_caching: bool = False  # the engines cache prefixes and placement models each cache
    scaling: ScalingSettings = field(default_factory=ScalingSettings)


def workers_needed(estimate: WorkerEstimate, held: int) -> int:
    """Workers one controller's own demand needs: its estimate, or the `held` ones when the
    estimate is unusable (the SLOs cannot be met at any rate: keep the count)."""
    return estimate.workers if estimate.usable else held


@dataclass(frozen=True)
class Routing:
    """Where `place` put a request: `worker_id` (None: the policy waits, route as Serve
    would), and the outcome label (placed, least_violation, waited, admitted)."""

    worker_id: str | None
    outcome: str


@dataclass(frozen=True)
class WorkerLoad:
    """A worker's load as its last report gave it."""

    worker_id: str
    kv_fraction: float
    running: int
    waiting: int


@dataclass(frozen=True)
class HeartbeatResult:
    """What one heartbeat changed: the worker's load, the workers forgotten, the estimate
    (`estimated`: recomputed by this call), and whether the controller needs the worker's next
    report in full (`LiveCluster.report`). Waiting requests the report made room for are
    admitted by the next `drain`."""

    load: WorkerLoad
    forgotten: list[str]
    estimate: WorkerEstimate
    estimated: bool
    target_workers: int
    workers_held: int
    queue_length: int  # requests the workers' engines have not scheduled yet, over all workers
    full_report: bool = False

    def reply(self) -> dict[str, Any]:
        """The worker's answer: the target for Serve's autoscaler, the estimate, and whether to
        send the next report in full."""
        return {"target_workers": self.target_workers, "full_report": self.full_report, **self.estimate.to_dict()}


@dataclass(frozen=True)
class ClosedLoopSnapshot:
    """The closed loop as it is now, and the promises missed since the last snapshot."""

    ttft_share: float
    atgt_share: float
    new_misses: dict[str, int]
    # prefix caching, per worker: prompt tokens of the requests finished since the last
    # snapshot, those placement expected the cache to hold, those the engine took from it
    new_prefix_hits: dict[str, PrefixHits] = field(default_factory=dict)


class PlacementController:
    """See the module docstring."""

    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        parts = make_policies(settings.policy, seed=settings.seed, target_attainment=settings.target_attainment,
                              atgt_margin=settings.atgt_margin, admission=settings.admission is not None)
        self.cluster = LiveCluster(settings.profile, parts.policy, loop=parts.loop, token_budget=settings.token_budget,
                                   prefix_caching=settings.prefix_caching)
        self.admission: Admission | None = None
        if parts.wait_policy is not None and settings.admission is not None:
            self.admission = Admission(self.cluster, parts.wait_policy, settings.admission,
                                       last_chance=parts.last_chance_policy)
        self.window = ArrivalWindow(settings.scaling.window_s)
        self.path_delay = PathDelay()
        self._overload = OverloadWatch()
        self._estimate: WorkerEstimate | None = None
        self._estimated_at = -float("inf")
        self._last_seen: dict[str, float] = {}
        self._suspects: set[str] = set()  # failed a request and have not reported since
        self._waiting: dict[str, int] = {}  # worker id -> requests its engine has not scheduled
        self._decisions: Counter[str] = Counter()  # worker id -> placements
        self.outcomes: Counter[str] = Counter()
        self.abandoned = 0  # queue places and placements dropped because their callers timed out
        self._recent: OrderedDict[str, str] = OrderedDict()
        self.scaling_log: list[dict[str, Any]] = []  # each change of the estimate or the target
        self._missed_reported = {"ttft": 0, "atgt": 0}
        self._prefix_reported: dict[str, PrefixHits] = {}
        self._reported_since_drain: set[str] = set()
        self._drained_all_at = -math.inf
        self._swept_at = -math.inf  # when silent workers were last looked for
        # other shards' (workers needed, workers held), for the target (placement.sharding)
        self.demand_elsewhere: tuple[int, int] = (0, 0)

    # admission (aladdin)

    def _arrived(self, request: RunningRequest, now_s: float) -> None:
        """`request` reached placement (admission or routing): count its arrival and, the first
        time, how long after it arrived."""
        if self.window.add(request.request_id, request.arrival_s, request.input_len, request.pred_mean,
                           request.sequences):
            self.path_delay.observe(now_s - request.arrival_s)

    def admit(self, request: RunningRequest, now_s: float) -> Verdict | None:
        """Admit `request` at once, refuse it, or queue it (None: its verdict comes from a
        later `drain` or `heartbeat`). Without admission every request is admitted unplaced."""
        self._arrived(request, now_s)
        if self.admission is None:
            return Verdict(request.request_id)
        verdict = self.admission.offer(request.to_request(), now_s)
        return None if verdict is None else self._settle(verdict)

    def drain(self, now_s: float, reported_only: bool = False) -> list[Verdict]:
        """Verdicts on waiting requests at `now_s`: refused past their deadline, or admitted
        where they fit now. `reported_only`: only on the workers that reported since the last
        drain (a report is what frees room), except once per heartbeat period, when every worker
        is tried (the model's own clock may have made room): a drain's cost grows with the
        workers it tries times the requests waiting, so the actor drains often over few."""
        if self.admission is None:
            return []
        everywhere = not reported_only or now_s - self._drained_all_at >= self.settings.heartbeat_s
        worker_ids = None if everywhere else self._reported_since_drain
        verdicts = [self._settle(v) for v in self.admission.drain(now_s, worker_ids)]
        if everywhere:
            self._drained_all_at = now_s
        self._reported_since_drain = set()
        return verdicts

    def unknown_admission(self, request_id: str) -> Verdict:
        """The verdict on a request asked about that is not waiting here (the controller was
        rebuilt and lost its queue): admitted without a choice of worker, as at a cold start,
        so a restart never refuses what it cannot judge."""
        return Verdict(request_id)

    def withdraw(self, request_id: str) -> bool:
        """A waiting request's caller went away: True if it was still waiting."""
        return self.admission is not None and self.admission.withdraw(request_id)

    def abandon(self, request_ids: list[str]) -> int:
        """Callers gave up on these requests' admission or placement calls (timed out) and
        went on without the answer: whatever those calls left here, a place in the queue or
        a placement no worker has reported, is dropped now rather than held until the
        reports' grace period ends. Returns how many were dropped."""
        dropped = 0
        for request_id in request_ids:
            dropped += int(self.withdraw(request_id)) + int(self.cluster.abandon(request_id))
        self.abandoned += dropped
        return dropped

    @property
    def workers_held(self) -> int:
        """Workers this controller knows alive (reporting, or named by routing lately)."""
        return len(self._last_seen)

    @property
    def admission_waiting(self) -> int:
        return 0 if self.admission is None else len(self.admission.queue)

    def _settle(self, verdict: Verdict) -> Verdict:
        self.outcomes[verdict.outcome] += 1
        if verdict.worker_id is not None:
            self._note_decision(verdict.request_id, verdict.worker_id)
        return verdict

    # routing

    def place(self, request: RunningRequest, candidates: list[str], now_s: float,
              feasible_only: bool = False) -> Routing:
        """The worker to run `request` on, among `candidates` (suspects skipped while others
        remain); the one it was admitted to, when admission placed it. `feasible_only`: None
        (outcome "passed", nothing recorded) unless a worker fits, for a router that offers it
        to another shard next."""
        candidates = [c for c in candidates if c not in self._suspects] or candidates
        self._seen(candidates, now_s)
        admitted_to = self.cluster.location(request.request_id)
        if admitted_to is not None and admitted_to in candidates and self.admission is not None:
            return Routing(admitted_to, "admitted")  # counted when it was admitted
        decision = self.cluster.place(request.to_request(), candidates, now_s, feasible_only=feasible_only)
        if feasible_only and not decision.feasible:
            return Routing(None, "passed")
        self._arrived(request, now_s)
        if decision.worker is None:
            routing = Routing(None, "waited")
        else:  # least violation: nothing was feasible, the policy took the mildest miss
            routing = Routing(decision.worker.id, "placed" if decision.feasible else "least_violation")
            self._note_decision(request.request_id, decision.worker.id)
        self.outcomes[routing.outcome] += 1
        return routing

    def fallback(self, request: RunningRequest, worker_id: str, now_s: float) -> None:
        """The router placed `request` on `worker_id` without the controller."""
        self.outcomes["fallback"] += 1
        self.window.add(request.request_id, request.arrival_s, request.input_len, request.pred_mean, request.sequences)
        self.cluster.admit(worker_id, request.to_request(), now_s)

    def worker_failed(self, request_id: str) -> str | None:
        """The worker running `request_id` failed: it is forgotten with its residents and
        skipped until it reports again. Returns its id (None: the request is unknown)."""
        worker_id = self.cluster.location(request_id)
        if worker_id is None:
            return None
        self._suspects.add(worker_id)
        self._forget([worker_id])
        return worker_id

    def _note_decision(self, request_id: str, worker_id: str) -> None:
        resident = self.cluster.workers[worker_id].residents.get(request_id)
        if resident is not None and resident.cached_tokens:
            self.window.cached(request_id, resident.cached_tokens)
        self._decisions[worker_id] += 1
        self._recent[request_id] = worker_id
        if len(self._recent) > RECENT_DECISIONS:
            self._recent.popitem(last=False)

    # reports

    def heartbeat(self, report: WorkerReport, now_s: float) -> HeartbeatResult:
        """Apply a worker's report: its residents, liveness, and the estimate (recomputed once
        per `estimate_period_s`)."""
        self._suspects.discard(report.worker_id)  # it is alive after all
        self._seen([report.worker_id], now_s)
        for item in report.running:
            self.window.add(item.request_id, item.arrival_s, item.input_len, item.pred_mean, item.sequences)
        for request_id, tokens in report.finished:
            self.window.finish(request_id, tokens)
        full_report = self.cluster.report(report, now_s)
        worker = self.cluster.workers[report.worker_id]
        self._waiting[report.worker_id] = report.waiting
        kv_used = worker.kv_used_tokens if report.kv_used_tokens is None else report.kv_used_tokens
        # running as placement holds them (a delta report lists only the new ones)
        load = WorkerLoad(report.worker_id, kv_used / max(1, worker.kv_capacity_tokens),
                          max(0, len(worker.residents) - report.waiting), report.waiting)
        forgotten = self._forget_silent(now_s)
        self._reported_since_drain.add(report.worker_id)  # its finished requests may have made room
        estimated = now_s - self._estimated_at >= self.settings.scaling.estimate_period_s or self._estimate is None
        if estimated:
            self._estimate_workers(now_s)
        estimate = self._estimate
        scaling = self.settings.scaling
        held = self.workers_held
        # the application's target: this shard's estimate plus the other shards' (sharding.DemandTable)
        needed_elsewhere, held_elsewhere = self.demand_elsewhere
        app_estimate = replace(estimate, workers=workers_needed(estimate, held) + needed_elsewhere,
                               usable=estimate.usable or needed_elsewhere > 0)
        target = scale_target(app_estimate, held + held_elsewhere, scaling.min_workers, scaling.max_workers)
        last = self.scaling_log[-1] if self.scaling_log else None
        if last is None or (last["estimate_workers"], last["target_workers"]) != (estimate.workers, target):
            self.scaling_log.append({
                "time_s": now_s, "estimate_workers": estimate.workers, "target_workers": target,
                "workers_held": held, "rate_per_s": estimate.rate_per_s,
                "window_full": estimate.window_full, "reason": estimate.reason,
            })
            del self.scaling_log[:-SCALING_LOG]
        return HeartbeatResult(load, forgotten, estimate, estimated, target, held,
                               sum(self._waiting.values()), full_report)

    def summary(self, shard: int) -> ShardSummary:
        """This controller's workers as shard `shard` publishes them to routers."""
        return summarize(shard, list(self.cluster.workers.values()))

    def observe(self, timings: list[RequestTiming]) -> None:
        """Finished requests as the ingress measured them: they close placement's loop."""
        self.cluster.observe(timings)

    def _forget_silent(self, now_s: float) -> list[str]:
        # once per heartbeat period: a sweep costs O(workers), and there is a report per worker
        if now_s - self._swept_at < self.settings.heartbeat_s:
            return []
        self._swept_at = now_s
        horizon = now_s - STALE_HEARTBEATS * self.settings.heartbeat_s
        return self._forget([wid for wid, seen in self._last_seen.items() if seen < horizon])

    def _seen(self, worker_ids: list[str], now_s: float) -> None:
        for worker_id in worker_ids:
            self._last_seen[worker_id] = now_s

    def _forget(self, worker_ids: list[str]) -> list[str]:
        if worker_ids:
            self.cluster.forget(worker_ids)
            for worker_id in worker_ids:
                self._last_seen.pop(worker_id, None)
                self._waiting.pop(worker_id, None)
                self._prefix_reported.pop(worker_id, None)
        return worker_ids

    def _estimate_workers(self, now_s: float) -> None:
        settings, scaling = self.settings, self.settings.scaling
        budget = None if self.cluster.loop is None else self.cluster.loop.budget
        in_flight = sum(len(w.residents) for w in self.cluster.workers.values())
        # what is left of the TTFT SLO once a request reaches placement: the serving path before
        # it (`path_delay`) is spent whatever the cluster's size (the simulator has none)
        slo_ttft_s = max(settings.slo_ttft_s - (self.path_delay.quantile(0.5) or 0.0), 1e-3)
        estimate = estimate_workers(
            self.window, self.cluster.fleet_profile(), now_s, slo_ttft_s, settings.slo_atgt_s,
            scaling.headroom,
            # plan for the ATGT budget the policy packs to, as the simulator's planner scaler does
            atgt_margin=1.0 if budget is None else budget.atgt_share, in_flight=in_flight,
            token_budget=self.cluster.token_budget, target_attainment=settings.target_attainment,
        )
        if self.cluster.loop is not None:  # placements that found no room say the plan lags
            floor = self._overload.floor(self.cluster.loop, len(self._last_seen))
            if floor > estimate.workers and estimate.usable:
                estimate = replace(estimate, workers=floor, reason="placements found no worker with room")
        self._estimate, self._estimated_at = estimate, now_s

    # inspection

    def closed_loop_snapshot(self) -> ClosedLoopSnapshot | None:
        """The closed loop now (None without one), with the misses since the last snapshot."""
        loop = self.cluster.loop
        if loop is None:
            return None
        misses = loop.feedback.misses
        new = {slo: misses[slo] - self._missed_reported[slo] for slo in misses}
        self._missed_reported = dict(misses)
        new_hits = {}
        for wid, hits in loop.prefix_hits.items():
            seen = self._prefix_reported.get(wid, PrefixHits())
            if hits.prompt_tokens > seen.prompt_tokens:
                new_hits[wid] = PrefixHits(hits.prompt_tokens - seen.prompt_tokens,
                                           hits.predicted_tokens - seen.predicted_tokens,
                                           hits.engine_tokens - seen.engine_tokens)
                self._prefix_reported[wid] = replace(hits)
        return ClosedLoopSnapshot(loop.budget.ttft_share, loop.budget.atgt_share, new, new_hits)

    def corrections(self) -> dict[str, WorkerCorrection]:
        """Each worker's latency correction: how far its engine is from the profile (measured
        under every policy; only a closed loop places by it)."""
        return dict(self.cluster.correction.workers)

    def stats(self) -> dict[str, Any]:
        """What the controller knows: placements per worker, outcomes, residents, the estimate,
        each worker's latency correction, the delay before placement, and the closed loop
        (packing budget, promises missed and still waiting for their timings)."""
        loop = self.cluster.loop
        closed_loop = None if loop is None else {
            "ttft_share": loop.budget.ttft_share, "atgt_share": loop.budget.atgt_share,
            "promises_counted": loop.feedback.counted, "promises_missed": dict(loop.feedback.misses),
            "promises_pending": loop.pending, "placements": loop.placements, "overcommitted": loop.overcommitted,
            "prefix_hits": {wid: asdict(h) for wid, h in loop.prefix_hits.items()},
        }
        profile = self.settings.profile
        return {
            "closed_loop": closed_loop,
            "path_delay": self.path_delay.to_dict(),
            "latency_corrections": {wid: {"decode_fixed_factor": c.decode_fixed_factor,
                                          "decode_batch_factor": c.decode_batch_factor,
                                          "prefill_factor": c.prefill_factor,
                                          "ttft_offset_s": c.ttft_offset_s, "intervals": c.intervals,
                                          "relative_error": c.relative_error, "memory_s": c.memory_s,
                                          "recent_intervals": c.recent_rows()}
                                    for wid, c in self.corrections().items()},
            "policy": self.settings.policy,
            "profile": f"{profile.family} tp{profile.tp}",
            "decisions": dict(self._decisions),
            "outcomes": dict(self.outcomes),
            "abandoned": self.abandoned,
            "residents": {wid: len(w.residents) for wid, w in self.cluster.workers.items()},
            "admission_waiting": self.admission_waiting,
            "estimate": None if self._estimate is None else self._estimate.to_dict(),
            "scaling_log": list(self.scaling_log),
            "demand_elsewhere": {"workers": self.demand_elsewhere[0], "held": self.demand_elsewhere[1]},
        }

    def decisions(self, request_ids: list[str]) -> dict[str, str]:
        """The worker chosen for each of these requests (those still remembered)."""
        return {rid: self._recent[rid] for rid in request_ids if rid in self._recent}

    def where(self, request_id: str) -> dict[str, Any] | None:
        """A resident request as placement sees it now (None once finished or unknown);
        `generated` counts the tokens of each of its sequences."""
        worker_id = self.cluster.location(request_id)
        if worker_id is None:
            return None
        worker = self.cluster.workers[worker_id]
        resident = worker.residents[request_id]
        decoding = resident.decode_from_step is not None
        return {
            "worker_id": worker_id, "decoding": decoding, "sequences": resident.request.sequences,
            "generated": worker.generated(request_id) if decoding else 0,
            "est_mean": resident.request.est_mean, "est_upper": resident.request.est_upper,
        }
