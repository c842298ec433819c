"""The placement actor: one named Ray actor per application, holding the placement/ policy.

- `admit` is called by the ingress before it sends a request (policy aladdin, with
  `placement.admission`): it answers at once with a worker where the request fits, a refusal,
  or "wait"; then `admission` answers once the request leaves the SLO-ODBS queue, admitted or
  refused because its TTFT SLO is lost (placement.admission; the ingress answers 429 with
  Retry-After).
- `place` is called by the worker deployment's request router (serve_app.placement_router) for
  every request and returns the replica to use (the admitted worker, when there is one).
- `heartbeat` is called by every worker on a short period with a batched `WorkerReport`
  (tokens generated per running request, completions, KV capacity). The actor's state is
  rebuilt from these alone, so a restarted actor (max_restarts=-1) converges within one
  heartbeat period, and requests placed by the router's fallback are accounted for too.
- Every `scaling.estimate_period_s` the actor turns its sliding window of arrivals into the
  planner's minimal-worker estimate; workers hand it to Serve's autoscaler
  (serve_app.autoscaling) and, if configured, the node plugin asks the Ray cluster autoscaler
  for matching resources (serve_app.node_scaler).

The actor is detached (it must outlive whichever process created it first: any ingress or
worker may) and exits by itself after `IDLE_EXIT_S` without calls, so a deleted application
does not leave it behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray

from placement.admission import Admission, AdmissionLimits, Verdict
from placement.arrival_window import ArrivalWindow
from placement.closed_loop import ClosedLoop
from placement.live import LiveCluster, RequestTiming, RunningRequest, WorkerReport
from placement.policies.registry import make_policy
from placement.worker_estimate import OverloadWatch, WorkerEstimate, estimate_workers, scale_target
from predictors.latency.families import load_profile_family
from predictors.latency.profile import WorkerProfile, vllm_token_budget
from serve_app.config import AppConfig
from serve_app.metrics import (
    forget_worker,
    record_capacity,
    record_closed_loop,
    record_placement,
    record_queue_length,
    record_worker,
)
from serve_app.node_scaler import NodeScaler

logger = logging.getLogger("ray.serve")

NAMESPACE = "aladdin"
IDLE_EXIT_S = 300.0
# A worker silent for this many heartbeat periods is presumed gone (Serve replaced it).
STALE_HEARTBEATS = 40
# Recent decisions kept for `decisions` (request id -> replica), for inspection and tests.
RECENT_DECISIONS = 10_000
SCALING_LOG = 100  # changes of the estimate kept for `stats`


def placement_actor_name(app_name: str, config: dict[str, Any]) -> str:
    """`placement:<app>:<digest of its config>`. A redeployed application whose config changed
    (another policy or profile) gets a fresh actor; the old one exits once idle. Without the
    digest the new deployment would keep talking to the old actor and its old policy."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return f"{_name_prefix(app_name)}{digest}"


def _name_prefix(app_name: str) -> str:
    return f"placement:{app_name or 'default'}:"


def find_placement_actor(app_name: str) -> ray.actor.ActorHandle:
    """The live placement actor of `app_name`, for inspection (stats, decisions) by callers that
    do not hold the app's config. LookupError unless exactly one is alive."""
    prefix = _name_prefix(app_name)
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == NAMESPACE and a["name"].startswith(prefix)]
    if len(names) != 1:
        raise LookupError(f"expected one placement actor for app {app_name!r}, found {names}")
    return ray.get_actor(names[0], namespace=NAMESPACE)


def engine_token_budget(config: AppConfig) -> int | None:
    """The workers' tokens per iteration with chunked prefill (vLLM's default for the profile's
    hardware unless `engine.extra` sets max_num_batched_tokens; the sim engine prefills first)."""
    if config.engine.kind == "sim":
        return None
    explicit = config.engine.extra.get("max_num_batched_tokens")
    return int(explicit) if explicit else vllm_token_budget(placement_profile(config))


def placement_profile(config: AppConfig) -> WorkerProfile:
    """The worker profile placement and the planner use: a fitted JSON or a committed family."""
    placement = config.placement
    if placement.profile_path:
        return WorkerProfile.model_validate_json(Path(placement.profile_path).read_text())
    return load_profile_family(placement.profile_family).profile(config.engine.tensor_parallel_size)


def get_placement_actor(app_name: str, config: dict[str, Any]) -> ray.actor.ActorHandle:
    """The application's placement actor, created on first use (by any caller)."""
    return PlacementActor.options(
        name=placement_actor_name(app_name, config), namespace=NAMESPACE, get_if_exists=True,
        lifetime="detached", max_restarts=-1, num_cpus=0, max_concurrency=1000,
        # on the head node, outside any caller's placement group: created from inside a worker
        # replica it would otherwise be captured by that replica's group (Serve sets
        # capture_child_tasks) and die, unrestartable, when that replica or its GPU node goes
        resources={"node:__internal_head__": 0.001}, scheduling_strategy="DEFAULT",
        # a few calls per request: with task events on, Ray's GCS would keep up to 100,000 of
        # them for its dashboard (~130 MB) and grow through a long run; Serve's own actors are
        # created the same way (RAY_SERVE_ENABLE_TASK_EVENTS)
        enable_task_events=False,
    ).remote(config)


@ray.remote
class PlacementActor:
    """See the module docstring."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = AppConfig.model_validate(config)
        placement = self._config.placement
        self._profile = placement_profile(self._config)
        # aladdin's budget: one object for the policy, admission, the planner and the feedback
        self._budget = placement.packing_budget() if placement.policy == "aladdin" else None
        live_options = {"budget": self._budget, "on_infeasible": "least-violation"} if self._budget else {}
        self._cluster = LiveCluster(
            self._profile, make_policy(placement.policy, seed=placement.seed, **live_options),
            loop=ClosedLoop(self._budget) if self._budget else None, token_budget=engine_token_budget(self._config),
        )
        self._missed_reported = {"ttft": 0, "atgt": 0}
        self._overload = OverloadWatch()
        self._window = ArrivalWindow(self._config.scaling.window_s)
        self._estimate: WorkerEstimate | None = None
        self._estimated_at = -float("inf")
        self._last_seen: dict[str, float] = {}
        self._waiting: dict[str, int] = {}  # worker id -> requests its engine has not scheduled
        self._decisions: Counter[str] = Counter()  # worker id -> placements
        self._outcomes: Counter[str] = Counter()
        self._recent: OrderedDict[str, str] = OrderedDict()
        self._scaling_log: list[dict[str, Any]] = []  # each change of the estimate or the target
        self._last_call = time.monotonic()
        self._node_scaler = NodeScaler(self._config)
        self._admission: Admission | None = None
        if placement.admits:
            self._admission = Admission(
                self._cluster, make_policy("aladdin", seed=placement.seed, budget=self._budget, on_infeasible="wait"),
                AdmissionLimits(placement.max_waiting, placement.max_wait_s),
            )
        self._suspects: set[str] = set()  # workers that failed a request and have not reported since
        self._admitting: dict[str, asyncio.Future] = {}  # waiting request id -> its verdict
        self._drain_task: asyncio.Task | None = None
        self._idle_task = asyncio.get_event_loop().create_task(self._exit_when_idle())
        logger.info("placement actor up: policy %s, profile %s tp%d", placement.policy,
                    self._profile.family, self._profile.tp)

    async def admit(self, request: RunningRequest) -> dict[str, Any] | None:
        """Admit `request` (see the module docstring): {"worker", "refused", "reason",
        "retry_after_s", ...}, or None when it waits: the caller then awaits `admission`.
        Answering at once keeps the caller's deadline for this call short (a dead or
        restarting actor is noticed within placement.actor_timeout_s)."""
        self._last_call = time.monotonic()
        self._window.add(request.request_id, request.arrival_s, request.input_len, request.pred_mean)
        if self._admission is None:
            return Verdict(request.request_id).__dict__
        verdict = self._admission.offer(request.to_request(), time.time())
        if verdict is None:
            self._admitting[request.request_id] = asyncio.get_running_loop().create_future()
            if self._drain_task is None or self._drain_task.done():
                self._drain_task = asyncio.get_running_loop().create_task(self._drain_while_waiting())
            return None
        return self._settle(verdict)

    async def admission(self, request_id: str) -> dict[str, Any]:
        """The verdict on a waiting request, once there is one. An unknown id (the actor
        restarted and lost its queue) is admitted without a choice of worker."""
        self._last_call = time.monotonic()
        future = self._admitting.get(request_id)
        if future is None:
            return Verdict(request_id).__dict__
        try:
            return (await asyncio.shield(future)).__dict__
        except asyncio.CancelledError:  # the caller went away: do not admit it later
            if self._admission is not None and self._admission.withdraw(request_id):
                self._admitting.pop(request_id, None)
            raise

    def _settle(self, verdict: Verdict) -> dict[str, Any]:
        outcome = "refused" if verdict.refused else ("admitted_after_wait" if verdict.queued else "admitted")
        self._outcomes[outcome] += 1
        record_placement(self._config.placement.policy, outcome)
        if verdict.worker_id is not None:
            self._note_decision(verdict.request_id, verdict.worker_id)
        return verdict.__dict__

    def _drain(self, now: float) -> None:
        if self._admission is None:
            return
        for verdict in self._admission.drain(now):
            self._settle(verdict)
            future = self._admitting.pop(verdict.request_id, None)
            if future is not None and not future.done():
                future.set_result(verdict)

    async def _drain_while_waiting(self) -> None:
        # heartbeats drain too; this catches deadlines between them
        while self._admission is not None and len(self._admission.queue):
            await asyncio.sleep(self._config.placement.heartbeat_s / 2)
            self._drain(time.time())

    def _note_decision(self, request_id: str, worker_id: str) -> None:
        self._decisions[worker_id] += 1
        self._recent[request_id] = worker_id
        if len(self._recent) > RECENT_DECISIONS:
            self._recent.popitem(last=False)

    async def place(self, request: RunningRequest, candidates: list[str]) -> str | None:
        """The replica (unique id) to run `request` on, among `candidates`."""
        self._last_call = time.monotonic()
        now = time.time()
        # a replica that failed stays among Serve's candidates until Serve notices; skip it
        candidates = [c for c in candidates if c not in self._suspects] or candidates
        self._seen(candidates, now)
        admitted_to = self._cluster.location(request.request_id)
        if admitted_to is not None and admitted_to in candidates and self._admission is not None:
            return admitted_to  # placed when it was admitted
        item = request.to_request()
        self._window.add(request.request_id, request.arrival_s, request.input_len, request.pred_mean)
        decision = self._cluster.place(item, candidates, now)
        chosen = None if decision.worker is None else decision.worker.id
        if chosen is None:
            outcome = "waited"
        elif not decision.feasible:
            outcome = "least_violation"  # nothing was feasible; the policy took the mildest miss
        else:
            outcome = "placed"
        self._outcomes[outcome] += 1
        if chosen is not None:
            self._note_decision(request.request_id, chosen)
        record_placement(self._config.placement.policy, outcome)
        return chosen

    async def fallback(self, request: RunningRequest, replica_id: str) -> None:
        """The router placed `request` without the actor (it did not answer in time)."""
        self._last_call = time.monotonic()
        self._outcomes["fallback"] += 1
        self._window.add(request.request_id, request.arrival_s, request.input_len, request.pred_mean)
        self._cluster.admit(replica_id, request.to_request(), time.time())

    async def worker_failed(self, request_id: str) -> str | None:
        """The worker running `request_id` failed (the ingress saw its call die): forget it and
        its residents, and place nothing there until it reports again. Returns its id."""
        worker_id = self._cluster.location(request_id)
        if worker_id is None:
            return None
        logger.warning("placement: worker %s failed a request; not placing there until it reports again", worker_id)
        self._suspects.add(worker_id)
        self._cluster.forget([worker_id])
        self._last_seen.pop(worker_id, None)
        self._waiting.pop(worker_id, None)
        forget_worker(worker_id)
        return worker_id

    async def heartbeat(self, report: WorkerReport) -> dict[str, Any]:
        """Apply a worker's report; returns the current estimate (for Serve's autoscaler)."""
        self._last_call = time.monotonic()
        self._suspects.discard(report.worker_id)  # it is alive after all
        now = time.time()
        self._seen([report.worker_id], now)
        for item in report.running:
            self._window.add(item.request_id, item.arrival_s, item.input_len, item.pred_mean)
        for request_id, tokens in report.finished:
            self._window.finish(request_id, tokens)
        self._cluster.report(report, now)
        worker = self._cluster.workers[report.worker_id]
        self._waiting[report.worker_id] = report.waiting
        kv_used = worker.kv_used_tokens if report.kv_used_tokens is None else report.kv_used_tokens
        record_worker(report.worker_id, kv_used / max(1, worker.kv_capacity_tokens),
                      len(report.running) - report.waiting, report.waiting)
        self._forget_stale(now)
        self._drain(now)  # finished requests may have made room for waiting ones
        estimate = self._refresh_estimate(now)
        scaling = self._config.scaling
        held = len(self._last_seen)
        target = scale_target(estimate, held, scaling.min_workers, scaling.max_workers)
        last = self._scaling_log[-1] if self._scaling_log else None
        if last is None or (last["estimate_workers"], last["target_workers"]) != (estimate.workers, target):
            self._scaling_log.append({
                "time_s": now, "estimate_workers": estimate.workers, "target_workers": target,
                "workers_held": held, "rate_per_s": estimate.rate_per_s,
                "window_full": estimate.window_full, "reason": estimate.reason,
            })
            del self._scaling_log[:-SCALING_LOG]
        return {"target_workers": target, **estimate.to_dict()}

    async def observe(self, timings: list[RequestTiming]) -> None:
        """Finished requests as the ingress measured them: they close placement's loop."""
        self._last_call = time.monotonic()
        self._cluster.observe(timings)

    def _closed_loop_stats(self) -> dict[str, Any] | None:
        loop = self._cluster.loop
        if loop is None:
            return None
        return {
            "ttft_share": loop.budget.ttft_share, "atgt_share": loop.budget.atgt_share,
            "promises_counted": loop.feedback.counted, "promises_missed": dict(loop.feedback.misses),
            "placements": loop.placements, "overcommitted": loop.overcommitted,
            "corrections": {wid: {"decode_factor": c.decode_factor, "prefill_factor": c.prefill_factor,
                                  "ttft_offset_s": c.ttft_offset_s, "intervals": c.intervals}
                            for wid, c in loop.correction.workers.items()},
        }

    def _record_closed_loop(self) -> None:
        loop = self._cluster.loop
        if loop is None:
            return
        misses = loop.feedback.misses
        new = {slo: misses[slo] - self._missed_reported[slo] for slo in misses}
        self._missed_reported = dict(misses)
        record_closed_loop(loop.budget.ttft_share, loop.budget.atgt_share, new, {
            wid: (c.decode_factor, c.prefill_factor, c.ttft_offset_s) for wid, c in loop.correction.workers.items()
        })

    async def stats(self) -> dict[str, Any]:
        """What the actor knows: placements per replica, outcomes, residents, the estimate, the
        closed loop (packing budget, promises missed, each worker's latency correction)."""
        return {
            "closed_loop": self._closed_loop_stats(),
            "policy": self._config.placement.policy,
            "profile": f"{self._profile.family} tp{self._profile.tp}",
            "decisions": dict(self._decisions),
            "outcomes": dict(self._outcomes),
            "residents": {wid: len(w.residents) for wid, w in self._cluster.workers.items()},
            "admission_waiting": 0 if self._admission is None else len(self._admission.queue),
            "estimate": None if self._estimate is None else self._estimate.to_dict(),
            "node_request": self._node_scaler.requested,
            "scaling_log": list(self._scaling_log),
        }

    async def decisions(self, request_ids: list[str]) -> dict[str, str]:
        """The replica the actor chose for each of these requests (those it remembers)."""
        return {rid: self._recent[rid] for rid in request_ids if rid in self._recent}

    async def where(self, request_id: str) -> dict[str, Any] | None:
        """A resident request as placement sees it now (None once finished or unknown)."""
        worker_id = self._cluster.location(request_id)
        if worker_id is None:
            return None
        worker = self._cluster.workers[worker_id]
        request = worker.residents[request_id].request
        decoding = worker.residents[request_id].decode_from_step is not None
        return {
            "worker": worker_id, "decoding": decoding,
            "generated": worker.generated(request_id) if decoding else 0,
            "est_mean": request.est_mean, "est_upper": request.est_upper,
        }

    def _seen(self, worker_ids: list[str], now: float) -> None:
        for worker_id in worker_ids:
            self._last_seen[worker_id] = now

    def _forget_stale(self, now: float) -> None:
        horizon = now - STALE_HEARTBEATS * self._config.placement.heartbeat_s
        stale = [wid for wid, seen in self._last_seen.items() if seen < horizon]
        if stale:
            logger.info("placement: forgetting replicas gone silent: %s", stale)
            self._cluster.forget(stale)
            for worker_id in stale:
                del self._last_seen[worker_id]
                self._waiting.pop(worker_id, None)
                forget_worker(worker_id)

    def _refresh_estimate(self, now: float) -> WorkerEstimate:
        scaling = self._config.scaling
        if self._estimate is not None and now - self._estimated_at < scaling.estimate_period_s:
            return self._estimate
        slo = self._config.slo
        in_flight = sum(len(w.residents) for w in self._cluster.workers.values())
        estimate = estimate_workers(
            self._window, self._cluster.fleet_profile(), now, slo.ttft_ms / 1000, slo.atgt_ms / 1000, scaling.headroom,
            # plan for the ATGT budget the policy packs to, as the simulator's planner scaler does
            atgt_margin=1.0 if self._budget is None else self._budget.atgt_share, in_flight=in_flight,
            token_budget=self._cluster.token_budget, target_attainment=self._config.placement.target_attainment,
        )
        held = len(self._last_seen)
        if self._cluster.loop is not None:  # placements that found no room say the plan lags
            floor = self._overload.floor(self._cluster.loop, held)
            if floor > estimate.workers and estimate.usable:
                estimate = replace(estimate, workers=floor, reason="placements found no worker with room")
        if self._estimate is None or estimate.workers != self._estimate.workers:
            logger.info("placement: minimal-worker estimate %d (x tp%d = %d GPUs) at %.3g req/s: %s",
                        estimate.workers, estimate.tp, estimate.gpus, estimate.rate_per_s, estimate.reason)
        self._estimate, self._estimated_at = estimate, now
        record_capacity(estimate.workers, estimate.gpus, held, held * self._profile.tp)
        self._record_closed_loop()
        record_queue_length(sum(self._waiting.values()))
        if scaling.enabled:
            self._node_scaler.apply(estimate, held)
        return estimate

    async def _exit_when_idle(self) -> None:
        while True:
            await asyncio.sleep(IDLE_EXIT_S / 10)
            if time.monotonic() - self._last_call > IDLE_EXIT_S:
                logger.info("placement actor idle for %.0f s: exiting", IDLE_EXIT_S)
                self._node_scaler.release()
                ray.actor.exit_actor()
