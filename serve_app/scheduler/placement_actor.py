"""The placement actor: one named Ray actor per application, the thin Ray adapter of a
`placement.controller.PlacementController` (all decisions are the controller's).

- `admit` is called by the ingress before it sends a request (policy aladdin, with
  `placement.admission`): it answers at once with a worker where the request fits, a refusal,
  or "wait"; then `admission` answers once the request leaves the SLO-ODBS queue, admitted or
  refused because its TTFT SLO is lost (placement.admission; the ingress answers 429 with
  Retry-After). Waiting requests are drained on a short period, not per heartbeat.
- `place` is called by the worker deployment's request router (serve_app.scheduler.placement_router) for
  every request and returns the worker to use (the admitted one, when there is one).
- `heartbeat` is called by every worker on a short period with a batched `WorkerReport`
  (tokens generated per running request, completions, KV capacity), or `heartbeat_many` with
  the reports of one node's workers by that node's relay (serve_app.scheduler.heartbeat_relay,
  `placement.heartbeat_relay`). The actor's state is
  rebuilt from these alone, so a restarted actor (max_restarts=-1) converges within one
  heartbeat period, and requests placed by the router's fallback are accounted for too.
- Every `scaling.estimate_period_s` the actor turns its sliding window of arrivals into the
  planner's minimal-worker estimate; workers hand it to Serve's autoscaler
  (serve_app.scheduler.autoscaling) and, if configured, the node plugin asks the Ray cluster autoscaler
  for matching resources (serve_app.scheduler.node_scaler).

The actor is detached (it must outlive whichever process created it first: any ingress or
worker may) and exits by itself after `IDLE_EXIT_S` without calls, so a deleted application
does not leave it behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import ray

from placement.admission import Verdict
from placement.controller import HeartbeatResult, PlacementController, workers_needed
from placement.live import RequestTiming, RunningRequest, WorkerReport
from placement.sharding import DemandTable
from serve_app.config import AppConfig
from serve_app.metrics import (
    forget_worker,
    record_capacity,
    record_closed_loop,
    record_corrections,
    record_path_delay,
    record_placement,
    record_queue_length,
    record_worker,
)
from serve_app.scheduler.node_scaler import NodeScaler

logger = logging.getLogger("ray.serve")

NAMESPACE = "aladdin"
IDLE_EXIT_S = 300.0
# Waiting requests are tried this many times per heartbeat period (over the workers that reported)
DRAINS_PER_HEARTBEAT = 10


async def exit_when_idle(last_call: Callable[[], float], what: str, before_exit: Callable[[], None] = lambda: None) -> None:
    """Exit the calling actor once `last_call()` (time.monotonic) is `IDLE_EXIT_S` old: a
    detached actor of a deleted application must not stay behind. `before_exit` runs first."""
    while True:
        await asyncio.sleep(IDLE_EXIT_S / 10)
        if time.monotonic() - last_call() > IDLE_EXIT_S:
            logger.info("%s idle for %.0f s: exiting", what, IDLE_EXIT_S)
            before_exit()
            try:
                ray.actor.exit_actor()  # marks the actor to exit once its calls are done
            except ray.exceptions.AsyncioActorExit:  # meant for a method's caller: none here
                return


def placement_actor_name(app_name: str, config: dict[str, Any], shard: int = 0) -> str:
    """`placement:<app>:<digest of its config>`, and `/<shard>` after it for shards other than
    0 (placement.shards). A redeployed application whose config changed (another policy or
    profile) gets fresh actors; the old ones exit once idle. Without the digest the new
    deployment would keep talking to the old actor and its old policy."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return f"{_name_prefix(app_name)}{digest}{f'/{shard}' if shard else ''}"


def _name_prefix(app_name: str) -> str:
    return f"placement:{app_name or 'default'}:"


def find_placement_actor(app_name: str, shard: int = 0) -> ray.actor.ActorHandle:
    """The live placement actor of `app_name` (of its shard `shard`), for inspection (stats,
    decisions) by callers that do not hold the app's config. LookupError unless exactly one is
    alive."""
    prefix = _name_prefix(app_name)
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == NAMESPACE and a["name"].startswith(prefix)
             and (a["name"].endswith(f"/{shard}") if shard else "/" not in a["name"][len(prefix):])]
    if len(names) != 1:
        raise LookupError(f"expected one placement actor for app {app_name!r}, found {names}")
    return ray.get_actor(names[0], namespace=NAMESPACE)


def get_placement_actor(app_name: str, config: dict[str, Any], shard: int = 0) -> ray.actor.ActorHandle:
    """The application's placement actor (of shard `shard`), created on first use (by any caller)."""
    return PlacementActor.options(
        name=placement_actor_name(app_name, config, shard), namespace=NAMESPACE, get_if_exists=True,
        lifetime="detached", max_restarts=-1, num_cpus=0, max_concurrency=1000,
        # on the head node, outside any caller's placement group: created from inside a worker
        # replica it would otherwise be captured by that replica's group (Serve sets
        # capture_child_tasks) and die, unrestartable, when that replica or its GPU node goes
        resources={"node:__internal_head__": 0.001}, scheduling_strategy="DEFAULT",
        # a few calls per request: with task events on, Ray's GCS would keep up to 100,000 of
        # them for its dashboard (~130 MB) and grow through a long run; Serve's own actors are
        # created the same way (RAY_SERVE_ENABLE_TASK_EVENTS)
        enable_task_events=False,
    ).remote(config, app_name, shard)


@ray.remote
class PlacementActor:
    """Ray adapter of a `PlacementController` (see the module docstring): wall-clock time, the
    futures of waiting requests, metrics, the node plugin and the idle exit."""

    def __init__(self, config: dict[str, Any], app_name: str = "", shard: int = 0) -> None:
        self._config = AppConfig.model_validate(config)
        self._raw_config, self._app_name, self._shard = config, app_name, shard
        # shard 0 keeps every shard's demand for the application's worker target
        self._demand = DemandTable(stale_s=3 * self._config.scaling.estimate_period_s)
        self._demand_task: asyncio.Task | None = None
        self._shard0: Any = None  # shard 0's handle, for shards other than 0
        self._controller = PlacementController(self._config.controller_settings())
        self._policy = self._config.placement.policy
        self._node_scaler = NodeScaler(self._config)
        self._logged_estimate: int | None = None
        self._admitting: dict[str, asyncio.Future] = {}  # waiting request id -> its verdict
        self._drain_task: asyncio.Task | None = None
        self._last_call = time.monotonic()
        self._idle_task = asyncio.get_event_loop().create_task(
            exit_when_idle(lambda: self._last_call, "placement actor", self._node_scaler.release))
        # What is loaded by now (modules, classes, functions: ~120k objects) lives as long as the
        # process; frozen, the collector's full collections, every few seconds under load, skip
        # it: their pauses, which every call waiting on the actor sits through, fell from 85-170
        # to ~45 ms (bench-actor, 256 workers). Ray Serve's proxy does the same.
        gc.collect()
        gc.freeze()
        profile = self._controller.settings.profile
        logger.info("placement actor up: policy %s, profile %s tp%d, shard %d of %d", self._policy, profile.family,
                    profile.tp, shard, self._config.placement.shards)

    async def admit(self, request: RunningRequest) -> Verdict | None:
        """Admit `request` (see the module docstring): its verdict, or None when it waits: the
        caller then awaits `admission`.
        Answering at once keeps the caller's deadline for this call short (a dead or
        restarting actor is noticed within placement.actor_timeout_s)."""
        self._last_call = time.monotonic()
        verdict = self._controller.admit(request, time.time())
        if verdict is None:
            self._admitting[request.request_id] = asyncio.get_running_loop().create_future()
            self._ensure_draining()
            return None
        return self._settled(verdict)

    async def admit_many(self, requests: list[RunningRequest]) -> list[Verdict | None]:
        """`admit` of each request, in order: one call for the requests an ingress replica
        coalesced (serve_app.scheduler.call_coalescer)."""
        return [await self.admit(request) for request in requests]

    async def admission(self, request_id: str) -> Verdict:
        """The verdict on a waiting request, once there is one."""
        self._last_call = time.monotonic()
        future = self._admitting.get(request_id)
        if future is None:
            return self._controller.unknown_admission(request_id)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:  # the caller went away: do not admit it later
            if self._controller.withdraw(request_id):
                self._admitting.pop(request_id, None)
            raise

    def _settled(self, verdict: Verdict) -> Verdict:
        if self._controller.admission is not None:
            record_placement(self._policy, verdict.outcome)
        future = self._admitting.pop(verdict.request_id, None)
        if future is not None and not future.done():
            future.set_result(verdict)
        return verdict

    def _ensure_draining(self) -> None:
        """Start the drain loop unless it runs (requests wait: only it settles them)."""
        if self._controller.admission_waiting and (self._drain_task is None or self._drain_task.done()):
            self._drain_task = asyncio.get_running_loop().create_task(self._drain_while_waiting())

    async def _drain_while_waiting(self) -> None:
        # Heartbeats make room; draining once per DRAINS_PER_HEARTBEAT-th of a period over the
        # workers that reported costs far less than a drain per heartbeat (hundreds per second)
        while self._controller.admission_waiting:
            await asyncio.sleep(self._config.placement.heartbeat_s / DRAINS_PER_HEARTBEAT)
            try:
                verdicts = self._controller.drain(time.time(), reported_only=True)
            except Exception:  # a drain that failed must not leave its waiting requests stranded
                logger.exception("placement: draining the admission queue failed; trying again")
                continue
            for verdict in verdicts:
                self._settled(verdict)

    async def place(self, request: RunningRequest, candidates: list[str], feasible_only: bool = False) -> str | None:
        """The worker (its replica's unique id) to run `request` on, among `candidates`;
        `feasible_only`: None unless one fits (the router offers it to another shard next)."""
        self._last_call = time.monotonic()
        routing = self._controller.place(request, candidates, time.time(), feasible_only)
        if routing.outcome not in ("admitted", "passed"):
            record_placement(self._policy, routing.outcome)
        return routing.worker_id

    async def place_many(self, requests: list[tuple[RunningRequest, list[str]]],
                         feasible_only: bool = False) -> list[str | None]:
        """`place` of each (request, candidates), in order: one call for the placements a
        router coalesced (serve_app.scheduler.call_coalescer)."""
        return [await self.place(request, candidates, feasible_only) for request, candidates in requests]

    async def summary(self) -> dict[str, Any]:
        """This shard as routers see it (placement.sharding.ShardSummary)."""
        return dataclasses.asdict(self._controller.summary(self._shard))

    async def demand(self, shard: int, workers: int, held: int) -> tuple[int, int]:
        """Shard 0: shard `shard` estimated `workers` for its demand and holds `held`; returns
        the (needed, held) workers of every other shard."""
        now_s = time.time()
        self._demand.report(shard, workers, held, now_s)
        if not self._controller.workers_held:  # no heartbeats here: the others' sums drive the nodes
            self._coordinate_without_workers(now_s)
        return self._demand.elsewhere(shard, now_s)

    def _coordinate_without_workers(self, now_s: float) -> None:
        # shard 0 asks for nodes and records the capacity gauges from its heartbeats; when no
        # worker hashes to it, it does so from the other shards' reports instead
        needed, held = self._demand.elsewhere(0, now_s)
        self._controller.demand_elsewhere = (needed, held)
        scaling = self._config.scaling
        tp = self._controller.settings.profile.tp
        record_capacity(needed, needed * tp, held, held * tp)
        if scaling.enabled:
            self._node_scaler.apply(min(scaling.max_workers, max(scaling.min_workers, needed)))

    async def fallback(self, request: RunningRequest, worker_id: str) -> None:
        """The router placed `request` without the actor (it did not answer in time)."""
        self._last_call = time.monotonic()
        self._controller.fallback(request, worker_id, time.time())

    async def abandon(self, request_ids: list[str]) -> None:
        """Callers timed out on these requests' calls and went on without the answer
        (PlacementController.abandon). A queued one's pending verdict goes too (admitted
        without a worker, as a restarted actor answers: no caller waits for it)."""
        self._controller.abandon(request_ids)
        for request_id in request_ids:
            future = self._admitting.pop(request_id, None)
            if future is not None and not future.done():
                future.set_result(self._controller.unknown_admission(request_id))

    async def worker_failed(self, request_id: str) -> str | None:
        """The worker running `request_id` failed (the ingress saw its call die): forget it and
        its residents, and place nothing there until it reports again. Returns its id."""
        worker_id = self._controller.worker_failed(request_id)
        if worker_id is not None:
            logger.warning("placement: worker %s failed a request; not placing there until it reports again",
                           worker_id)
            forget_worker(worker_id)
        return worker_id

    async def heartbeat(self, report: WorkerReport) -> dict[str, Any]:
        """Apply a worker's report; returns the current estimate (for Serve's autoscaler)."""
        self._last_call = time.monotonic()
        result = self._controller.heartbeat(report, time.time())
        self._ensure_draining()  # a safety net: the drain loop is what settles waiting requests
        load = result.load
        record_worker(load.worker_id, load.kv_fraction, load.running, load.waiting)
        if result.forgotten:
            logger.info("placement: forgetting workers gone silent: %s", result.forgotten)
            for worker_id in result.forgotten:
                forget_worker(worker_id)
        if result.estimated:
            self._estimated(result)
        return result.reply()

    async def heartbeat_many(self, reports: list[WorkerReport]) -> list[dict[str, Any]]:
        """`heartbeat` of each report, in order: one call for the workers of a node
        (serve_app.scheduler.heartbeat_relay)."""
        return [await self.heartbeat(report) for report in reports]

    def _estimated(self, result: HeartbeatResult) -> None:
        estimate, held = result.estimate, result.workers_held
        if estimate.workers != self._logged_estimate:
            logger.info("placement: minimal-worker estimate %d (x tp%d = %d GPUs) at %.3g req/s: %s",
                        estimate.workers, estimate.tp, estimate.gpus, estimate.rate_per_s, estimate.reason)
            self._logged_estimate = estimate.workers
        if self._shard == 0:  # the application's figures (every shard's, with shards)
            needed_elsewhere, held_elsewhere = self._controller.demand_elsewhere
            workers, held_all = estimate.workers + needed_elsewhere, held + held_elsewhere
            record_capacity(workers, workers * estimate.tp, held_all, held_all * estimate.tp)
        record_corrections({wid: (c.factors(), c.ttft_offset_s, c.relative_error, c.memory_s)
                            for wid, c in self._controller.corrections().items()})
        delay = self._controller.path_delay
        record_path_delay(delay.quantile(0.5), delay.quantile(0.9))
        snapshot = self._controller.closed_loop_snapshot()
        if snapshot is not None:
            record_closed_loop(snapshot.ttft_share, snapshot.atgt_share, snapshot.new_misses, {
                wid: (h.prompt_tokens, h.predicted_tokens, h.engine_tokens)
                for wid, h in snapshot.new_prefix_hits.items()})
        record_queue_length(result.queue_length)
        if self._config.placement.shards > 1:
            self._share_demand(workers_needed(estimate, held), held)
        if self._config.scaling.enabled and self._shard == 0:  # one shard asks for nodes
            self._node_scaler.apply(result.target_workers)

    def _share_demand(self, workers: int, held: int) -> None:
        # through shard 0's table; a shard that cannot reach it keeps the last sums it got
        if self._demand_task is not None and not self._demand_task.done():
            return
        self._demand_task = asyncio.get_running_loop().create_task(self._send_demand(workers, held))

    async def _send_demand(self, workers: int, held: int) -> None:
        try:
            if self._shard == 0:
                sums = await self.demand(0, workers, held)
            else:
                if self._shard0 is None:
                    self._shard0 = get_placement_actor(self._app_name, self._raw_config, 0)
                async with asyncio.timeout(self._config.placement.actor_timeout_s):
                    sums = await self._shard0.demand.remote(self._shard, workers, held)
            self._controller.demand_elsewhere = tuple(sums)
        except Exception as exc:
            self._shard0 = None  # look it up again: it may have been restarted
            logger.debug("placement shard %d: demand not shared (%r)", self._shard, exc)

    async def observe(self, timings: list[RequestTiming]) -> None:
        """Finished requests as the ingress measured them: they close placement's loop."""
        self._last_call = time.monotonic()
        self._controller.observe(timings)

    async def stats(self) -> dict[str, Any]:
        """What the actor knows (PlacementController.stats) and the node plugin's request."""
        return {**self._controller.stats(), "node_request": self._node_scaler.requested, "shard": self._shard}

    async def decisions(self, request_ids: list[str]) -> dict[str, str]:
        """The worker the actor chose for each of these requests (those it remembers)."""
        return self._controller.decisions(request_ids)

    async def where(self, request_id: str) -> dict[str, Any] | None:
        """A resident request as placement sees it now (None once finished or unknown)."""
        return self._controller.where(request_id)

