"""The worker deployment's request router: routes each request to the replica the placement
actor chose for it.

It subclasses Serve's `PowerOfTwoChoicesRequestRouter` (the base Ray Serve LLM's prefix-aware
router uses too): `choose_replicas` first runs the power-of-two step, which keeps the router's
locality and backoff state right and is the fallback, then asks the placement actor, unless
admission already placed the request on one of the candidates (one actor call per request, not
two). Concurrent placements go to the actor together (`CallCoalescer`: one call per round
trip). Serve's FIFO matching is replaced by exact matching, so the replica chosen for a request
is bound to that request and not handed to whichever request is oldest.

With `placement.shards` > 1 the candidates are grouped by the shard owning them, and the
request is offered to two shards (serve_app.scheduler.placement_shards: the roomier first by
their summaries); the first places it only where it fits (`feasible_only`), else the second
places it as one actor would (its least violation), as `placement.sharding.ShardedPolicy`
does in the simulator.

If an actor does not answer within `placement.actor_timeout_s` (restarting, overloaded), the
power-of-two choice is used, the actor owning that replica is told where the request went (so
its state stays right once it is back), the first fallback is logged and every one is counted.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.serve._private.request_router.common import PendingRequest
from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve._private.request_router.replica_wrapper import RunningReplica
from ray.serve._private.request_router.request_router import RequestRouter

from placement.live import RunningRequest
from serve_app.metrics import record_placement
from serve_app.scheduler.placement_shards import PlacementShards
from serve_app.worker.worker_protocol import GenerateRequest

logger = logging.getLogger("ray.serve")


class PlacementRouter(PowerOfTwoChoicesRequestRouter):
    """See the module docstring. Configured through `RequestRouterConfig` with
    `request_router_kwargs={"config": <AppConfig dict>}`."""

    # exact matching (RequestRouter's), not FIFOMixin's: a placement is for one request
    _fulfill_next_pending_request = RequestRouter._fulfill_next_pending_request

    def initialize_state(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().initialize_state(**kwargs)
        from serve_app.config import AppConfig

        self._app_config = config or {}
        parsed = AppConfig.model_validate(self._app_config)
        self._policy = parsed.placement.policy
        self._shards = PlacementShards(self.app_name, self._app_config)
        self._fallback_logged = False

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        ranked = await super().choose_replicas(candidate_replicas, pending_request)
        request = _generate_request(pending_request)
        item = None if request is None else request.placement
        if item is None or not candidate_replicas:
            return ranked
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        admitted = by_id.get(request.admitted_to) if request.admitted_to else None
        if admitted is not None:  # admission placed it: the actor would answer the same
            return [[admitted]]
        try:
            chosen = await self._shards.place(item, list(by_id))
        except Exception as exc:  # timeout, actor dead or restarting
            return self._fall_back(item, ranked, exc)
        replica = by_id.get(chosen) if chosen is not None else None
        return [[replica]] if replica is not None else ranked

    def _fall_back(self, item: RunningRequest, ranked: list[list[RunningReplica]], exc: BaseException) -> list[list[RunningReplica]]:
        record_placement(self._policy, "fallback")
        if not self._fallback_logged:
            logger.warning("placement actor did not answer (%r); falling back to power-of-two choices "
                           "(logged once; counted in aladdin_placements_total{outcome=fallback})", exc)
            self._fallback_logged = True
        if ranked and ranked[0]:
            # tell the actor where the request goes, without waiting (it may be down)
            self._tell_fallback(item, ranked[0][0].replica_id.unique_id)
        return ranked

    def _tell_fallback(self, item: RunningRequest, worker_id: str) -> None:
        try:
            self._shards.actor(self._shards.of_worker(worker_id)).fallback.remote(item, worker_id)
        except Exception:  # the worker's next heartbeat reports it anyway
            pass


def _generate_request(pending_request: PendingRequest | None) -> GenerateRequest | None:
    if pending_request is None:
        return None
    for arg in pending_request.args:
        if isinstance(arg, GenerateRequest):
            return arg
    return None

