"""The trace-driven discrete-event simulation of a cluster of workers.

One global event heap holds the end of each worker's current work, warm-up completions and
scaling ticks; arrivals are read from the trace in order beside it. On arrival the request
gets its predicted lengths from the length model and the placement policy (the production
object) picks a worker or leaves it waiting in the central queue (`WaitingQueue`, ordered by
the queue order), which is offered to the policy again whenever a request finishes and at
scaling ticks. With `SimConfig.admission` the server's own `Admission` decides instead: it
admits, queues (SLO-ODBS, bounded) or refuses, exactly as the placement controller does.
Before each placement every worker in a decode run is brought up to date, so
the policy reads the batch as it is at that moment.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from placement.admission import Admission, AdmissionLimits
from placement.closed_loop import ClosedLoop
from placement.policy import Decision, PlacementPolicy, QueueOrder
from placement.queue_order import WaitingQueue
from placement.rebalance import SurvivalEstimator
from placement.simulator.length_model import LengthModel
from placement.simulator.metrics import RequestRecord, Summary, summarize
from placement.prefix_cache import PrefixCache, PrefixDirectory
from placement.simulator.worker_engine import EngineOptions, WorkerEngine
from placement.state import Request, WorkerState
from placement.traces import TraceRequest, trace_prefix
from predictors.latency.profile import WorkerProfile

_WORKER_DONE, _WORKER_READY, _TICK, _REPORT = 0, 1, 2, 3
# event kinds from this one up are left to subclasses (`_dispatch`)
FIRST_EXTRA_EVENT = 4


@dataclass(frozen=True)
class SimConfig:
    """What the simulation runs: SLOs, starting workers, engine settings."""

    slo_ttft_s: float
    slo_atgt_s: float
    workers: int = 1
    engine: EngineOptions = EngineOptions()
    warmup_s: float = 0.0  # a worker added while running serves after this delay
    rebalance: bool = True  # error-aware rebalancing (estimates raised as requests outlive them)
    admission: AdmissionLimits | None = None  # SLO-aware admission, as served (needs Cluster.wait_policy)
    # what the workers' time really is, when it differs from the profile placement starts from
    # (a slower host; placement's latency correction then has something to learn)
    timing_profile: WorkerProfile | None = None
    # how long after its arrival a request reaches placement (the live serving path before the
    # placement actor: `placement.path_delay`); its TTFT and deadline still count from arrival
    placement_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.placement_delay_s < 0:
            raise ValueError("placement_delay_s must be >= 0")


@dataclass
class SimResult:
    summary: Summary
    records: list[RequestRecord]


class ClusterView(Protocol):
    """What an autoscaler reads and controls."""

    now_s: float
    profile: WorkerProfile
    arrival_window_s: float  # how far back `recent_arrivals` looks

    @property
    def active_workers(self) -> int: ...

    def ongoing_requests(self) -> int: ...

    def recent_arrivals(self) -> Sequence[RequestRecord]: ...

    def scale_to(self, workers: int) -> None: ...


class Autoscaler(Protocol):
    """Called every `period_s`; sets the worker count through `cluster.scale_to`."""

    period_s: float

    def tick(self, cluster: ClusterView) -> None: ...


@dataclass
class _Worker:
    engine: WorkerEngine
    started_s: float
    pool: list[WorkerState]  # the list of ready workers it joins (what a policy reads)
    ready: bool = False
    stopped_s: float | None = None


@dataclass
class Cluster:
    """Runs one simulation; build it and call `run()` once."""

    trace: Sequence[TraceRequest]
    profile: WorkerProfile
    policy: PlacementPolicy
    queue_order: QueueOrder
    lengths: LengthModel
    config: SimConfig
    truncated: int = 0
    autoscaler: Autoscaler | None = None
    arrival_window_s: float = 60.0  # how far back `recent_arrivals` looks
    wait_policy: PlacementPolicy | None = None  # `policy` in "wait" mode: what admission fits by
    last_chance_policy: PlacementPolicy | None = None  # and what it fits a request by that cannot wait
    loop: ClosedLoop | None = None  # feedback from finished requests to the policy's budget
    now_s: float = 0.0
    records: list[RequestRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.profile.kv.capacity_tokens < self.profile.max_model_len:
            raise ValueError("the worker's KV cache cannot hold one max_model_len request")
        self.queue = WaitingQueue(self.queue_order)
        self._events: list[tuple[float, int, int, object, int]] = []
        self._seq = itertools.count()
        self._all: list[_Worker] = []
        self._by_id: dict[str, _Worker] = {}
        self.workers: list[WorkerState] = []  # ready workers, as the policy sees them
        self._names = itertools.count()
        self._records_by_id: dict[str, RequestRecord] = {}
        self._unfinished = 0
        self._recent_start = 0
        self._timeline: list[tuple[float, int]] = []
        self._estimator = (
            SurvivalEstimator(r.output_len for r in self.trace) if self.config.rebalance else None
        )
        self._prefix_directory = PrefixDirectory()  # placement's caches' first blocks
        self._admission: Admission | None = None
        self._report_pushed_s = -math.inf  # the latest report time an event is queued for
        if self.config.admission is not None:
            if self.wait_policy is None:
                raise ValueError("admission needs the policy in wait mode (Cluster.wait_policy)")
            self._admission = Admission(_AdmissionView(self), self.wait_policy, self.config.admission,
                                        last_chance=self.last_chance_policy)

    # ---- the view an autoscaler uses -------------------------------------------------

    @property
    def active_workers(self) -> int:
        """Workers serving or warming up, not draining."""
        return sum(1 for w in self._all if w.stopped_s is None and w.engine.state.accepting)

    def ongoing_requests(self) -> int:
        """Requests placed and not finished, plus those waiting in the central queue."""
        return self._unfinished

    def recent_arrivals(self) -> Sequence[RequestRecord]:
        """Requests that arrived within `arrival_window_s` before now."""
        start = self._recent_start
        while start < len(self.records) and self.records[start].request.arrival_s < self.now_s - self.arrival_window_s:
            start += 1
        self._recent_start = start
        return self.records[start:]

    def scale_to(self, workers: int) -> None:
        """Grow (reactivate draining workers first, then start new ones after the warm-up) or
        shrink (drain the least loaded: no new placements, residents finish) to `workers`."""
        workers = max(0, workers)
        live = [w for w in self._all if w.stopped_s is None]
        active = [w for w in live if w.engine.state.accepting]
        if workers > len(active):
            for w in live:
                if len(active) >= workers:
                    break
                if not w.engine.state.accepting:
                    w.engine.state.accepting = True
                    active.append(w)
            while len(active) < workers:
                active.append(self._start_worker(self.config.warmup_s))
        elif workers < len(active):
            by_load = sorted(active, key=lambda w: (w.ready, len(w.engine.state.residents)))
            for w in by_load[: len(active) - workers]:
                w.engine.state.accepting = False
                self._retire_if_empty(w)
        self._mark_gpus()

    # ---- workers ---------------------------------------------------------------------

    @property
    def prefix_aware(self) -> bool:
        """Whether placement models each worker's prefix cache: the engines cache prefixes and
        the policy reads hits (`uses_prefix_cache`)."""
        return self.config.engine.prefix_caching and getattr(self.policy, "uses_prefix_cache", False)

    def _start_worker(self, warmup_s: float) -> _Worker:
        budget = self.config.engine.chunk_budget(self.config.timing_profile or self.profile)
        state = WorkerState(id=f"w{next(self._names)}", profile=self.profile, token_budget=budget,
                            prefix_cache=PrefixCache(self._prefix_directory) if self.prefix_aware else None)
        engine = WorkerEngine(state, self.config.engine, self._estimator, timing_profile=self.config.timing_profile)
        return self._add_worker(engine, warmup_s)

    def _add_worker(self, engine: WorkerEngine, warmup_s: float, pool: list[WorkerState] | None = None) -> _Worker:
        """Start a worker around `engine`; after `warmup_s` it joins `pool` (default: the
        workers the placement policy chooses from)."""
        state = engine.state
        worker = _Worker(engine, started_s=self.now_s, pool=self.workers if pool is None else pool)
        self._all.append(worker)
        self._by_id[state.id] = worker
        if warmup_s <= 0:
            self._make_ready(worker)
        else:
            self._push(self.now_s + warmup_s, _WORKER_READY, worker, 0)
        return worker

    def _make_ready(self, worker: _Worker) -> None:
        if worker.stopped_s is not None:
            return
        worker.ready = True
        worker.pool.append(worker.engine.state)

    def _retire_if_empty(self, worker: _Worker) -> None:
        if worker.engine.state.accepting or not worker.engine.empty or worker.stopped_s is not None:
            return
        worker.stopped_s = self.now_s
        if worker.ready:
            worker.pool.remove(worker.engine.state)

    def _gpus(self) -> int:
        return sum(w.engine.profile.tp for w in self._all if w.stopped_s is None)

    def _mark_gpus(self) -> None:
        gpus = self._gpus()
        if not self._timeline or self._timeline[-1][1] != gpus:
            self._timeline.append((self.now_s, gpus))

    # ---- events ----------------------------------------------------------------------

    def _push(self, t: float, kind: int, obj: object, version: int) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, obj, version))

    def _kick(self, engine: WorkerEngine) -> None:
        end = engine.start_next(self.now_s) if engine.idle else engine.interrupt(self.now_s)
        if end is not None:
            self._push(end, _WORKER_DONE, engine, engine.version)

    def run_placement(self, request: Request, decision: Decision) -> None:
        """Run a placement made for an arrived request (already admitted to its worker)."""
        self._place(self._records_by_id[request.id], decision)

    def _place(self, record: RequestRecord, decision: Decision) -> None:
        """Run a placement the policy made (the request is already admitted to the worker)."""
        worker = decision.worker
        resident = worker.residents.get(record.request.id)
        record.predicted_cached_tokens = 0 if resident is None else resident.cached_tokens
        if self.loop is not None:
            self.loop.placed(record.request, worker, decision, self.now_s)
        engine = self._by_id[worker.id].engine
        engine.enqueue(record)
        self._kick(engine)

    def _arrive(self, index: int, item: TraceRequest) -> None:
        record = self._new_record(index, item)
        self._sync_workers()
        if self._admission is not None:
            verdict = self._admission.offer(record.request, self.now_s)
            if verdict is not None and verdict.refused:
                self._refuse(record)
            elif verdict is not None and verdict.worker_id is None:  # no worker yet: wait for one
                self.queue.push(record.request, self.now_s)
            return
        decision = self.policy.decide(record.request, self.workers, self.now_s)
        if decision.worker is None:
            self.queue.push(record.request, self.now_s)
            return
        decision.worker.admit(record.request, self.now_s)
        self._place(record, decision)

    def _new_record(self, index: int, item: TraceRequest) -> RequestRecord:
        """The record of a trace request arriving now, with its predicted lengths."""
        mean, upper = self.lengths.predict(item.input_len, item.output_len)
        request = Request(
            id=str(index),
            arrival_s=item.arrival_s,
            input_len=item.input_len,
            pred_mean=mean,
            pred_upper=upper,
            slo_ttft_s=self.config.slo_ttft_s,
            slo_atgt_s=self.config.slo_atgt_s,
            output_len=item.output_len,
            prefix=trace_prefix(item) if self.config.engine.prefix_caching else None,
        )
        # the serving path is the hosts', like the engines' time: the timing profile's when given
        overhead_s = (self.config.timing_profile or self.profile).serving_overhead_at_s(self._unfinished)
        record = RequestRecord(request, item.output_len, overhead_s=overhead_s)
        self.records.append(record)
        self._records_by_id[request.id] = record
        self._unfinished += 1
        return record

    def _sync_workers(self) -> None:
        for state in self.workers:
            self._by_id[state.id].engine.sync(self.now_s)

    def _refuse(self, record: RequestRecord) -> None:
        record.refused = True
        self._unfinished -= 1

    def _offer_waiting(self) -> None:
        if self._admission is not None and len(self._admission.queue):
            self._sync_workers()
            for verdict in self._admission.drain(self.now_s):
                if verdict.refused:
                    self._refuse(self._records_by_id[verdict.request_id])
        if not len(self.queue):
            return
        self._sync_workers()
        for request, decision in self.queue.place_waiting(self.policy, self.workers, self.now_s):
            self._place(self._records_by_id[request.id], decision)

    def _worker_done(self, engine: WorkerEngine) -> None:
        finished = engine.complete(self.now_s)
        if self.loop is not None and engine.last_work is not None:
            self.loop.busy(engine.state, engine.last_work.interval(self.profile), self.profile)
            engine.state.set_queue_lateness(self.loop.queue_lateness(engine.state, self.now_s))
        for record in finished:
            self._unfinished -= 1
            self.lengths.observe(record.request.input_len, record.output_len)
            if self.loop is not None:
                self.loop.finished(record.request.id, record.ttft_s, record.atgt_s, record.output_len,
                                   record.cached_tokens if self.config.engine.prefix_caching else None)
        if finished:
            self._offer_waiting()
        report_s = engine.next_report_s
        if report_s is not None and report_s > self._report_pushed_s:  # one event per report time
            self._report_pushed_s = report_s
            self._push(report_s, _REPORT, None, 0)
        if engine.idle:
            self._kick(engine)
        worker = self._by_id[engine.state.id]
        if engine.empty:
            self._retire_if_empty(worker)
            self._mark_gpus()

    def _can_progress(self) -> bool:
        """Whether anything is left that a later tick could change: work on a worker, a
        worker warming up (requests stuck in the queue with neither stay unfinished)."""
        return any(w.stopped_s is None and (not w.ready or not w.engine.empty) for w in self._all)

    def _start_initial_workers(self) -> None:
        for _ in range(self.config.workers):
            self._start_worker(0.0)

    def _dispatch(self, kind: int, obj: object, version: int, trace_left: bool) -> None:
        """Handle one event popped at `now_s` (`trace_left`: arrivals remain)."""
        if kind == _WORKER_DONE:
            if obj.version == version:  # type: ignore[attr-defined]
                self._worker_done(obj)  # type: ignore[arg-type]
        elif kind == _WORKER_READY:
            self._make_ready(obj)  # type: ignore[arg-type]
            self._offer_waiting()
        elif kind == _REPORT:  # workers' reports took finished requests out of placement's view
            self._offer_waiting()
        elif kind == _TICK:
            self.autoscaler.tick(self)  # type: ignore[union-attr]
            self._offer_waiting()
            if trace_left or self._can_progress():
                self._push(self.now_s + self.autoscaler.period_s, _TICK, None, 0)  # type: ignore[union-attr]
        else:
            raise ValueError(f"unknown event kind {kind}")

    def run(self) -> SimResult:
        """Simulate the whole trace; returns the summary and every request's record."""
        self._start_initial_workers()
        self._mark_gpus()
        if self.autoscaler is not None:
            self._push(0.0, _TICK, None, 0)
        trace = self.trace
        delay = self.config.placement_delay_s
        i = 0
        events = self._events
        while True:
            next_arrival = trace[i].arrival_s + delay if i < len(trace) else math.inf
            if events and events[0][0] <= next_arrival:
                t, _, kind, obj, version = heapq.heappop(events)
                self.now_s = t
                self._dispatch(kind, obj, version, i < len(trace))
            elif i < len(trace):
                self.now_s = next_arrival
                self._arrive(i, trace[i])
                i += 1
            else:
                break
        if self._admission is not None:  # nothing left to free room: the rest can only be refused
            for verdict in self._admission.drain(math.inf):
                self._refuse(self._records_by_id[verdict.request_id])
        return SimResult(self._summary(), self.records)

    def _end_s(self) -> float:
        return max(self.now_s, max((r.finish_s for r in self.records if not math.isnan(r.finish_s)), default=0.0))

    def _gpu_seconds(self, workers: Sequence[_Worker]) -> float:
        """GPU-seconds the workers held until they stopped (or the end), warm-up included."""
        end = self._end_s()
        return sum(
            w.engine.profile.tp * ((w.stopped_s if w.stopped_s is not None else end) - w.started_s) for w in workers
        )

    def _summary(self) -> Summary:
        return summarize(
            self.records,
            truncated=self.truncated,
            gpu_seconds=self._gpu_seconds(self._all),
            workers_peak=max((g for _, g in self._timeline), default=0) // self.profile.tp,
            gpu_timeline=self._timeline,
            prefix_caching=self.config.engine.prefix_caching,
        )


class _AdmissionView:
    """The simulated cluster as admission drives it (`placement.admission.AdmissionCluster`):
    worker ids, the fleet profile, placing one request or the waiting queue; a placement it
    makes is run."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    def fleet_profile(self) -> WorkerProfile:
        loop = self._cluster.loop
        return self._cluster.profile if loop is None else loop.correction.fleet_profile(self._cluster.profile)

    def base_profile(self) -> WorkerProfile:
        return self._cluster.profile

    @property
    def workers(self) -> dict[str, WorkerState]:
        return {w.id: w for w in self._cluster.workers}

    def place(
        self, request: Request, candidates: Sequence[str], now_s: float, policy: PlacementPolicy | None = None
    ) -> Decision:
        by_id = self.workers
        decision = (policy or self._cluster.policy).decide(request, [by_id[c] for c in candidates], now_s)
        if decision.worker is not None:
            decision.worker.admit(request, now_s)
            self._cluster.run_placement(request, decision)
        return decision

    def place_waiting(
        self, queue: WaitingQueue, now_s: float, policy: PlacementPolicy | None = None,
        worker_ids: Collection[str] | None = None,
    ) -> list[tuple[Request, Decision]]:
        workers = self._cluster.workers
        if worker_ids is not None:
            workers = [w for w in workers if w.id in worker_ids]
        placed = queue.place_waiting(policy or self._cluster.policy, workers, now_s)
        for request, decision in placed:
            self._cluster.run_placement(request, decision)
        return placed

    def admit(self, worker_id: str, request: Request, now_s: float) -> None:
        """Place `request` on `worker_id` unchecked (it promises nothing), as LiveCluster.admit."""
        worker = self.workers[worker_id]
        worker.admit(request, now_s)
        self._cluster.run_placement(request, Decision(worker, False))
