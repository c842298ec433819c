"""Placement state of a live cluster, kept from what its workers report.

The placement controller (placement.controller, behind the serving actor) holds one
`LiveCluster`. It runs the same policy objects as the simulator over `WorkerState`s, but the truth about each worker comes from the worker itself:
every heartbeat (`WorkerReport`) gives the requests the worker is running with the tokens each
has generated, and the ones that finished. A full report lists every running request; a delta
report (the usual one) only what changed since the report the actor last acknowledged: requests
new to it (or with a first token it has not seen) in full, the others' token counts as
(id, count) pairs, so applying it costs O(changes) rather than O(running). A delta from a
worker that has sent this cluster no full report yet (the actor restarted: a routing call may
have named the worker already), or a count for a request it does not know, makes `report` ask
for a full report, which rebuilds the state. From reports the cluster
- admits requests it did not place (placed by the router's fallback, or known before a restart
  of the actor: the state is rebuilt from reports alone),
- starts the decode of requests that produced their first token, and advances the worker's
  lockstep step counter by the tokens reported since the last heartbeat,
- removes finished requests, and requests the worker no longer runs once they are older than
  a grace period (placed, but the call never reached the worker),
- raises the estimates of requests that outlived their prediction (error-aware rebalancing).

The engine's real KV capacity (blocks x block size) replaces the profile's when reported.

The work a report says the engine did (`EngineWork`) is compared with the profile under every
policy (`correction`: how far the engines are from the model, for the planner's estimate, the
operator's metrics and `aladdin fidelity`). With a `ClosedLoop` (Aladdin) the cluster also
closes the SLO model's loop: every placement it makes or records is a promise; the correction
is what placement reads each worker through; the ingress's measurements of finished requests
(`RequestTiming`, via `observe`) feed the attainment feedback and the reply-length distribution.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from placement.closed_loop import ClosedLoop
from placement.latency_correction import EngineWork, LatencyCorrection
from placement.policy import Decision, PlacementPolicy
from placement.prefix_cache import Prefix, PrefixCache, PrefixDirectory
from placement.queue_order import WaitingQueue
from placement.rebalance import SurvivalEstimator, rebalance
from placement.state import Request, WorkerState
from predictors.latency.profile import WorkerProfile

# A placed request the worker has not reported yet is kept this long before it is presumed lost
# (its call failed or was cancelled before reaching the worker).
PENDING_GRACE_S = 10.0


@dataclass(frozen=True)
class RunningRequest:
    """A request as its worker reports it: what placement needs to re-admit it, and progress."""

    request_id: str
    arrival_s: float
    input_len: int
    pred_mean: float
    pred_upper: float
    slo_ttft_s: float
    slo_atgt_s: float
    generated: int = 0  # over all its sequences
    first_token_s: float | None = None  # wall clock of its first token, once it has one
    prefix: Prefix | None = None  # its prompt's blocks at the engine's block size, when modelled
    sequences: int = 1  # samples asked for (OpenAI's `n`), each a sequence of the engine's

    def to_request(self) -> Request:
        return Request(
            id=self.request_id, arrival_s=self.arrival_s, input_len=max(1, self.input_len),
            pred_mean=max(self.pred_mean, 1e-9), pred_upper=max(self.pred_upper, self.pred_mean, 1e-9),
            slo_ttft_s=self.slo_ttft_s, slo_atgt_s=self.slo_atgt_s, prefix=self.prefix,
            sequences=max(1, self.sequences),
        )


def per_sequence(generated: int, sequences: int) -> int:
    """Tokens each of a request's sequences has generated, from their sum (they decode in
    lockstep; rounded up, so a first token starts the decode)."""
    return -(-generated // sequences)


@dataclass(frozen=True)
class RequestTiming:
    """A finished request as the ingress measured it."""

    request_id: str
    ttft_s: float
    atgt_s: float
    output_tokens: int
    cached_tokens: int | None = None  # of its prompt, what the engine took from its prefix cache


@dataclass(frozen=True)
class WorkerReport:
    """One batched heartbeat of a worker: full (`running` lists every running request) or a
    delta against the last acknowledged report (`running` only the requests new since, or
    whose first token is; `progress` the new token counts of the others)."""

    worker_id: str
    running: tuple[RunningRequest, ...] = ()
    finished: tuple[tuple[str, int], ...] = ()  # (request id, output tokens)
    full: bool = True
    progress: tuple[tuple[str, int], ...] = ()  # (request id, tokens generated), delta reports
    kv_capacity_tokens: int | None = None  # None until the engine has allocated its cache
    waiting: int = 0  # of `running`, those the engine has not scheduled yet
    kv_used_tokens: int | None = None  # the engine's own KV use (blocks used x block size)
    work: EngineWork | None = None  # what the engine did since the last acknowledged report


def with_kv_capacity(profile: WorkerProfile, capacity_tokens: int) -> WorkerProfile:
    """`profile` with its KV cache resized to `capacity_tokens` (in whole blocks)."""
    blocks = max(1, capacity_tokens // profile.kv.block_size)
    if blocks == profile.kv.num_blocks:
        return profile
    return profile.model_copy(update={"kv": profile.kv.model_copy(update={"num_blocks": blocks})})


class LiveCluster:
    """Workers and their residents as placement sees them, driven by reports."""

    def __init__(
        self,
        profile: WorkerProfile,
        policy: PlacementPolicy,
        estimator: SurvivalEstimator | None = None,
        pending_grace_s: float = PENDING_GRACE_S,
        loop: ClosedLoop | None = None,
        token_budget: int | None = None,
        prefix_caching: bool = False,
    ) -> None:
        """`token_budget`: the engines' tokens per iteration with chunked prefill (None:
        prefill-first), which placement's TTFT model needs. `prefix_caching`: the engines cache
        prompt prefixes and placement keeps its picture of each worker's cache (kept from the
        prompts placed there, evicted at the engine's reported KV capacity)."""
        self.profile = profile
        self.policy = policy
        self.estimator = estimator or SurvivalEstimator()
        self.pending_grace_s = pending_grace_s
        self.loop = loop
        # the loop's own; a policy without one (the baselines) does not read it, but the
        # engines are measured against the model all the same
        self.correction = loop.correction if loop is not None else LatencyCorrection()
        self.token_budget = token_budget
        self.prefix_caching = prefix_caching
        self._prefix_directory = PrefixDirectory()
        self.workers: dict[str, WorkerState] = {}
        self._where: dict[str, str] = {}  # request id -> worker id
        self._placed_at: dict[str, float] = {}  # request id -> time placed, until first reported
        self._profiles: dict[int, WorkerProfile] = {}  # reported capacity -> resized profile
        self._bases: dict[str, WorkerProfile] = {}  # worker id -> its resized profile (before correction)
        self._synced: set[str] = set()  # workers whose full report this cluster has had

    def worker(self, worker_id: str) -> WorkerState:
        """The worker's state, created (with the default profile) on first mention."""
        state = self.workers.get(worker_id)
        if state is None:
            state = self.workers[worker_id] = WorkerState(worker_id, self.profile, token_budget=self.token_budget,
                                                          prefix_cache=self._new_prefix_cache())
        return state

    def fleet_profile(self) -> WorkerProfile:
        """The default profile as the workers' corrections put it (for planning and admission)."""
        return self.correction.fleet_profile(self.profile)

    def base_profile(self) -> WorkerProfile:
        """The default profile before any correction: what the hardware does idle."""
        return self.profile

    def place(
        self, request: Request, candidates: Sequence[str], now_s: float, policy: PlacementPolicy | None = None,
        feasible_only: bool = False,
    ) -> Decision:
        """The policy's decision among `candidates` (worker ids), admitted there unless it
        waits (`Decision.worker` None) or, with `feasible_only`, is not feasible (the caller
        offers it elsewhere: another shard). Placing a request id again (a retried routing)
        moves it. `policy` overrides the cluster's (e.g. the same policy in "wait" mode, for
        admission)."""
        self._drop_request(request.id)
        workers = [self.worker(c) for c in candidates]
        decision = (policy or self.policy).decide(request, workers, now_s)
        if decision.worker is not None and (decision.feasible or not feasible_only):
            self._admit(decision.worker, request, now_s, decision)
        return decision

    def place_waiting(
        self, queue: WaitingQueue, now_s: float, policy: PlacementPolicy | None = None,
        worker_ids: Collection[str] | None = None,
    ) -> list[tuple[Request, Decision]]:
        """Offer `queue`'s requests to the policy in queue order over `worker_ids` (None: every
        known worker); admit those it places (see WaitingQueue.place_waiting)."""
        workers = (list(self.workers.values()) if worker_ids is None
                   else [self.workers[w] for w in worker_ids if w in self.workers])
        if not workers:
            return []
        placed = queue.place_waiting(policy or self.policy, workers, now_s)
        for request, decision in placed:
            self._where[request.id] = decision.worker.id
            self._placed_at[request.id] = now_s
            if self.loop is not None:
                self.loop.placed(request, decision.worker, decision, now_s)
        return placed

    def admit(self, worker_id: str, request: Request, now_s: float) -> None:
        """Record a placement made elsewhere (e.g. a fallback choice) on `worker_id`: no policy
        checked it, so it promises nothing and counts as an overcommit of that worker."""
        self._drop_request(request.id)
        worker = self.worker(worker_id)
        self._admit(worker, request, now_s, Decision(worker, False))

    def observe(self, timings: Iterable[RequestTiming]) -> None:
        """Finished requests as the ingress measured them (see the module docstring)."""
        if self.loop is None:
            return
        for t in timings:
            self.loop.finished(t.request_id, t.ttft_s, t.atgt_s, t.output_tokens, t.cached_tokens)

    def report(self, report: WorkerReport, now_s: float) -> bool:
        """Apply one heartbeat of a worker (see the module docstring). Returns whether the
        cluster needs a full report from it (a delta from a worker or of a request it does not
        know: the actor restarted, or a report was lost)."""
        if report.full:
            self._synced.add(report.worker_id)
        needs_full = report.worker_id not in self._synced
        worker = self.worker(report.worker_id)
        if report.kv_capacity_tokens:
            worker = self._resize(worker, report.kv_capacity_tokens)
        for request_id, _ in report.finished:
            if self._where.get(request_id) == worker.id:
                self._drop_request(request_id)
                if self.loop is not None:
                    self.loop.ended(request_id, now_s)
        running = {r.request_id: r for r in report.running}
        for request_id, item in running.items():
            if self._where.get(request_id) != worker.id:
                self._drop_request(request_id)
                self._admit(worker, item.to_request(), now_s, Decision(worker, False))
            self._placed_at.pop(request_id, None)
            if item.generated > 0 and worker.residents[request_id].decode_from_step is None:
                worker.start_decode(request_id, now_s if item.first_token_s is None else item.first_token_s)
        behind = 0
        residents = worker.residents
        for rid, item in running.items():
            resident = residents[rid]
            if resident.decode_from_step is not None:
                generated = per_sequence(item.generated, resident.request.sequences)
                behind = max(behind, generated - 1 - worker.generated(rid))
        for rid, generated in report.progress:
            resident = residents.get(rid)
            if resident is None:
                needs_full = True
            elif resident.decode_from_step is not None:
                generated = per_sequence(generated, resident.request.sequences)
                behind = max(behind, generated - 1 - worker.generated(rid))
        if behind > 0:
            worker.advance(behind)
        if report.full:
            for request_id in [rid for rid in residents if rid not in running]:
                placed = self._placed_at.get(request_id)
                if placed is None or now_s - placed > self.pending_grace_s:
                    self._drop_request(request_id)
        else:  # placed here but never reported by it: its call did not reach the worker
            for request_id in [rid for rid, placed in self._placed_at.items()
                               if now_s - placed > self.pending_grace_s and self._where.get(rid) == worker.id]:
                self._drop_request(request_id)
        rebalance(worker, self.estimator)
        base = self._base(worker)
        if report.work is not None and report.work.busy_s > 0:
            if self.loop is not None:
                self.loop.busy(worker, report.work.interval(base), base)
            else:
                self.correction.observe(worker.id, report.work.interval(base))
        if self.loop is not None:
            self.loop.refresh(worker, base, now_s)
            self.loop.expire(now_s)
        return needs_full

    def _new_prefix_cache(self) -> PrefixCache | None:
        return PrefixCache(self._prefix_directory) if self.prefix_caching else None

    def _base(self, worker: WorkerState) -> WorkerProfile:
        """The profile a worker's correction scales: the default one at its engine's KV size."""
        return self._bases.get(worker.id, self.profile)

    def forget(self, worker_ids: Iterable[str]) -> None:
        """Drop workers that are gone (their residents with them)."""
        for worker_id in list(worker_ids):
            worker = self.workers.pop(worker_id, None)
            self._bases.pop(worker_id, None)
            self._synced.discard(worker_id)
            if worker is None:
                continue
            if worker.prefix_cache is not None:
                worker.prefix_cache.detach()
            for request_id in worker.residents:
                self._where.pop(request_id, None)
                self._placed_at.pop(request_id, None)
                if self.loop is not None:
                    self.loop.dropped(request_id)
            if self.loop is not None:
                self.loop.forget_worker(worker_id)
            else:
                self.correction.forget(worker_id)

    def abandon(self, request_id: str) -> bool:
        """Drop a placement no worker has reported yet: its caller gave up waiting for the
        answer and routed the request elsewhere. True if one was dropped. (A request a
        worker has reported stays: it runs there.)"""
        if request_id not in self._placed_at:
            return False
        self._drop_request(request_id)
        if self.loop is not None:
            self.loop.dropped(request_id)
        return True

    def location(self, request_id: str) -> str | None:
        """The worker a request is resident on, if any."""
        return self._where.get(request_id)

    def _admit(self, worker: WorkerState, request: Request, now_s: float, decision: Decision) -> None:
        worker.admit(request, now_s)
        self._where[request.id] = worker.id
        self._placed_at[request.id] = now_s
        if self.loop is not None:
            self.loop.placed(request, worker, decision, now_s)

    def _drop_request(self, request_id: str) -> None:
        worker_id = self._where.pop(request_id, None)
        self._placed_at.pop(request_id, None)
        if worker_id is not None and worker_id in self.workers:
            self.workers[worker_id].remove(request_id)

    def _resize(self, worker: WorkerState, capacity_tokens: int) -> WorkerState:
        """Give the worker its engine's KV capacity, re-admitting its residents if it changed."""
        profile = self._profiles.get(capacity_tokens)
        if profile is None:
            profile = self._profiles[capacity_tokens] = with_kv_capacity(self.profile, capacity_tokens)
        if self._base(worker) is profile:
            return worker
        self._bases[worker.id] = profile
        # the cache picture starts again from the residents' prompts (a rare event: a first
        # report, or an engine restarted with another KV size)
        if worker.prefix_cache is not None:
            worker.prefix_cache.detach()
        fresh = WorkerState(worker.id, profile, accepting=worker.accepting, token_budget=self.token_budget,
                            prefix_cache=self._new_prefix_cache())
        for request_id, resident in worker.residents.items():
            fresh.admit(resident.request, self._placed_at.get(request_id, resident.request.arrival_s))
            if resident.decode_from_step is not None:
                fresh.start_decode(request_id, resident.decode_started_s)
        self.workers[worker.id] = fresh
        return fresh
