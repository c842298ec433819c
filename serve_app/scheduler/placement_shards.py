"""The application's placement actors as one caller (router, ingress) sees them.

With `placement.shards` = 1 this is a cache of the one actor's handle. With K > 1 there is
one actor per shard (serve_app.scheduler.placement_actor, named per shard), each owning the
workers whose replica id hashes to it (`placement.sharding.shard_of`); callers offer a request
to the shards `placement.sharding.shard_order` picks (two at random, the roomier first) by the
shards' summaries, fetched in the background at most once per heartbeat period, so a caller
never waits for them (a shard whose summary is unknown counts as roomy; one that did not
answer, as having no room, until it does). Admission goes only to shards known to hold workers
(a shard without any would admit unplaced, never shedding).

`admit` and `place` make the ingress's and the router's calls (and `aladdin bench-actor`'s):
concurrent calls to one shard go together (`CallCoalescer`), each bounded by
`placement.actor_timeout_s`; a failed call forgets the shard's handle (a timed-out one first
tells the shard to abandon what it may still do for the request), and `place` goes on to the
next shard, raising only when the last one failed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from placement.admission import Verdict
from placement.live import RunningRequest
from placement.sharding import shard_of, shard_order
from serve_app.scheduler.call_coalescer import CallCoalescer

T = TypeVar("T")

logger = logging.getLogger("ray.serve")


class PlacementShards:
    """Handles of an application's placement actors and the rooms their summaries last gave."""

    def __init__(self, app_name: str, config: dict[str, Any], coalesce: bool = True) -> None:
        from serve_app.config import AppConfig

        placement = AppConfig.model_validate(config).placement
        self.app_name, self.config = app_name, config  # the config as given: it names the actors
        self.count = placement.shards
        self._refresh_s = placement.heartbeat_s
        self._timeout_s = placement.actor_timeout_s
        self._actors: dict[int, Any] = {}
        self._rooms = [1.0] * self.count
        self._workers: list[int | None] = [None] * self.count  # each shard's, once a summary told
        self._refreshed_at = -math.inf
        self._refresh: asyncio.Task | None = None
        self._rng = random.Random()
        self._coalesce = coalesce
        self._admissions: dict[int, CallCoalescer[RunningRequest, Verdict | None]] = {}
        self._placements: dict[tuple[int, bool], CallCoalescer[tuple[RunningRequest, list[str]], str | None]] = {}

    def coalesced(self) -> tuple[int, int]:
        """Actor calls sent so far by the coalescers of `admit` and `place`, and the requests
        they carried (0, 0 without coalescing)."""
        coalescers = [*self._admissions.values(), *self._placements.values()]
        return sum(c.calls for c in coalescers), sum(c.items for c in coalescers)

    def actor(self, shard: int = 0) -> Any:
        """Shard `shard`'s actor (created on first use by whoever asks first)."""
        if shard not in self._actors:
            from serve_app.scheduler.placement_actor import get_placement_actor

            self._actors[shard] = get_placement_actor(self.app_name, self.config, shard)
        return self._actors[shard]

    def forget(self, shard: int) -> None:
        """Look shard `shard`'s actor up again next time (it failed: restarting or recreated)."""
        self._actors.pop(shard, None)

    def of_worker(self, worker_id: str) -> int:
        """The shard that owns `worker_id`."""
        return shard_of(worker_id, self.count)

    async def admit(self, request: RunningRequest) -> tuple[int, Verdict | None]:
        """Admission of `request` by the roomier of two shards: (that shard, its verdict; None:
        it waits there, ask that shard's `admission`)."""
        staffed = [k for k, n in enumerate(self._workers) if n]
        shard = self.order(staffed if staffed else None)[0]
        if not self._coalesce:
            return shard, await self._bounded(shard, request, lambda: self.actor(shard).admit.remote(request))
        if shard not in self._admissions:
            self._admissions[shard] = CallCoalescer(lambda batch: self.actor(shard).admit_many.remote(batch))
        return shard, await self._bounded(shard, request, lambda: self._admissions[shard].call(request))

    async def place(self, request: RunningRequest, worker_ids: Sequence[str]) -> str | None:
        """The worker to run `request` on among `worker_ids`: offered to the shards owning them
        in `order`, all but the last placing it only where it fits (as ShardedPolicy does)."""
        groups: dict[int, list[str]] = {}
        for worker_id in worker_ids:
            groups.setdefault(self.of_worker(worker_id), []).append(worker_id)
        order = self.order(list(groups))
        for i, shard in enumerate(order):
            last = i == len(order) - 1
            try:
                chosen = await self._place_in(shard, request, groups[shard], feasible_only=not last)
            except Exception:
                if last:
                    raise
                continue  # that shard is down: the next one places it as the last would
            if chosen is not None:
                return chosen
        return None

    async def _place_in(self, shard: int, request: RunningRequest, worker_ids: list[str], feasible_only: bool) -> str | None:
        if not self._coalesce:
            return await self._bounded(
                shard, request, lambda: self.actor(shard).place.remote(request, worker_ids, feasible_only))
        key = (shard, feasible_only)
        if key not in self._placements:
            self._placements[key] = CallCoalescer(
                lambda batch: self.actor(shard).place_many.remote(batch, feasible_only))
        return await self._bounded(shard, request, lambda: self._placements[key].call((request, worker_ids)))

    async def _bounded(self, shard: int, request: RunningRequest, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`'s answer within `placement.actor_timeout_s`. On a timeout the shard is
        told to drop what the call may still do for `request` (the caller goes on without
        it: an unreported placement there would hold room until the reports' grace ends);
        sent at once. (Ray does not order an async actor's calls, so it may run after a later
        call placing the request there again; that placement is then dropped until the
        worker's next report shows the request running, one heartbeat period.)"""
        handle = self.actor(shard)  # the one the call goes to (another caller may forget it meanwhile)
        try:  # asyncio.timeout: 3.11's wait_for drops a cancellation that meets a finished call
            async with asyncio.timeout(self._timeout_s):
                return await call()
        except TimeoutError:
            self.forget(shard)
            handle.abandon.remote([request.request_id])
            raise
        except Exception:
            self.forget(shard)
            raise

    def order(self, populated: Sequence[int] | None = None) -> list[int]:
        """The shards to offer a request to, in order, among `populated` (None: all)."""
        if self.count == 1:
            return [0]
        self._refresh_rooms()
        return shard_order(self._rooms, list(range(self.count)) if populated is None else populated, self._rng)

    def _refresh_rooms(self) -> None:
        now = time.monotonic()
        if now - self._refreshed_at < self._refresh_s or (self._refresh is not None and not self._refresh.done()):
            return
        self._refreshed_at = now
        self._refresh = asyncio.get_running_loop().create_task(self._fetch_rooms())

    async def _fetch_rooms(self) -> None:
        async def summary(shard: int) -> tuple[float, int | None]:
            try:
                async with asyncio.timeout(self._timeout_s):
                    answer = await self.actor(shard).summary.remote()
            except Exception as exc:  # restarting or gone: last in the order until it answers
                logger.debug("placement shard %d: no summary (%r)", shard, exc)
                self.forget(shard)
                return -1.0, self._workers[shard]
            return float(answer["room"]), int(answer["workers"])

        summaries = await asyncio.gather(*(summary(k) for k in range(self.count)))
        self._rooms = [room for room, _ in summaries]
        self._workers = [workers for _, workers in summaries]
