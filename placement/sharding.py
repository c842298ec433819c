"""Sharded placement: K placement policies, each over a fixed partition of the workers, and a
router that picks a shard per request from compact shard summaries.

The live design (issue 16) runs one placement actor per shard, each owning the workers whose
id hashes to it; this module is the decision part it shares with the simulator, so the cost
of sharding in attainment is measured before the actors exist:

- `shard_of`: a worker's shard depends on its id alone (a hash), so replicas coming and going
  never move another worker between shards.
- `ShardSummary`: what a shard publishes (with every heartbeat sweep, so the router sees it up
  to `refresh_s` late): its accepting workers and the roomiest one's room, the smaller of its
  free KV share (by residents' upper final sizes) and its ATGT headroom (1 - the decode step
  at those sizes over the tightest resident ATGT SLO).
- `ShardedPolicy`: per request, two shards drawn at random, the one with more room first (the
  power of two choices: with summaries up to a period old, always taking the roomiest shard
  sends a whole period's arrivals to one shard); a shard with nothing feasible passes the
  request to the other (a shard's "no room" answer costs the live router one more round trip);
  when neither fits, the first one's answer stands (its least violation, or "wait").
- `DemandTable`: live, each shard estimates the workers its own share of the demand needs;
  shard 0 keeps every shard's latest estimate and workers held, and each shard asks Serve for
  the sum (its own plus the others').
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from placement.packing_budget import PackingBudget
from placement.policy import Decision, PlacementPolicy
from placement.state import Request, WorkerState

#: shards a request may be offered to (drawn at random, the roomier first)
CHOICES = 2


def shard_of(worker_id: str, shards: int) -> int:
    """The shard that owns `worker_id` (stable: a function of the id alone)."""
    if shards < 1:
        raise ValueError("shards must be >= 1")
    if shards == 1:
        return 0
    digest = hashlib.blake2b(worker_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


@dataclass(frozen=True)
class ShardSummary:
    """One shard as the router sees it: accepting workers and the roomiest one's room (0-1)."""

    shard: int
    workers: int
    room: float


def worker_room(worker: WorkerState) -> float:
    """How much more a worker can take, 0 (none) to 1 (idle): the smaller of its free KV share
    and its ATGT headroom, both at its residents' upper final sizes."""
    capacity = worker.kv_capacity_tokens
    kv = max(0.0, (capacity - worker.kv_final_tokens) / capacity) if capacity else 0.0
    slo = worker.min_slo_atgt_s
    if not worker.residents or slo == math.inf:
        return kv
    step = worker.profile.decode_step_s(worker.resident_sequences, worker.final_context_tokens)
    return min(kv, max(0.0, 1.0 - step / slo))


def summarize(shard: int, workers: Sequence[WorkerState]) -> ShardSummary:
    """The summary of `shard` over its workers."""
    accepting = [w for w in workers if w.accepting]
    return ShardSummary(shard, len(accepting), max((worker_room(w) for w in accepting), default=0.0))


def shard_order(rooms: Sequence[float], populated: Sequence[int], rng: random.Random) -> list[int]:
    """The shards to offer a request to, in order: `CHOICES` of the `populated` ones drawn at
    random, the one with more room (`rooms[k]`, from its summary) first. The live router and
    ingress (serve_app.scheduler.placement_shards) and `ShardedPolicy` share it."""
    drawn = rng.sample(list(populated), min(CHOICES, len(populated)))
    return sorted(drawn, key=lambda k: -rooms[k])


class ShardedPolicy:
    """K copies of a policy, each over its shard's workers (see the module docstring). A
    `PlacementPolicy`: the simulator and admission call it as they call one policy."""

    def __init__(self, make_shard_policy: Callable[[int], PlacementPolicy], shards: int,
                 refresh_s: float = 0.25, seed: int = 0) -> None:
        if shards < 2:
            raise ValueError("a sharded policy needs shards >= 2")
        self.shards = shards
        self.policies = [make_shard_policy(k) for k in range(shards)]
        self.name = self.policies[0].name
        self.refresh_s = refresh_s
        self._rng = random.Random(seed)
        self._room: list[float] = [1.0] * shards
        self._summarized_at = float("-inf")
        self._groups: dict[int, list[WorkerState]] = {}
        self._workers: list[WorkerState] = []

    # what callers read of a policy besides its decisions is the shards' own (built alike)
    @property
    def budget(self) -> PackingBudget:
        return self.policies[0].budget

    @property
    def uses_prefix_cache(self) -> bool:
        return getattr(self.policies[0], "uses_prefix_cache", False)

    def choose(self, request: Request, workers: Sequence[WorkerState], now_s: float) -> WorkerState | None:
        return self.decide(request, workers, now_s).worker

    def decide(self, request: Request, workers: Sequence[WorkerState], now_s: float) -> Decision:
        groups = self._partition(workers)
        if now_s - self._summarized_at >= self.refresh_s:
            self._room = [summarize(k, groups.get(k, [])).room for k in range(self.shards)]
            self._summarized_at = now_s
        populated = [k for k in range(self.shards) if groups.get(k)]
        if not populated:
            return Decision(None, False)
        first: Decision | None = None
        for shard in shard_order(self._room, populated, self._rng):
            decision = self.policies[shard].decide(request, groups[shard], now_s)
            if decision.feasible:
                return decision
            first = first or decision
        return first

    def _partition(self, workers: Sequence[WorkerState]) -> dict[int, list[WorkerState]]:
        # the same list as last time (the simulator and the live cluster keep theirs): the
        # shards' lists, and with them their policies' cached tables, stay as they were
        if workers == self._workers:
            return self._groups
        groups: dict[int, list[WorkerState]] = {}
        for worker in workers:
            groups.setdefault(shard_of(worker.id, self.shards), []).append(worker)
        self._workers, self._groups = list(workers), groups
        return groups


@dataclass(frozen=True)
class ShardDemand:
    """What one shard last estimated: workers its demand needs, and workers it holds."""

    workers: int
    held: int
    at_s: float


class DemandTable:
    """Shard 0's table of every shard's latest demand (see the module docstring). A shard
    silent for `stale_s` (gone, or its actor restarting) no longer counts."""

    def __init__(self, stale_s: float) -> None:
        self.stale_s = stale_s
        self._demand: dict[int, ShardDemand] = {}

    def report(self, shard: int, workers: int, held: int, now_s: float) -> None:
        """Shard `shard` estimated `workers` for its demand and holds `held`."""
        self._demand[shard] = ShardDemand(workers, held, now_s)

    def elsewhere(self, shard: int, now_s: float) -> tuple[int, int]:
        """Workers needed and held by the shards other than `shard` (fresh reports only)."""
        fresh = [d for k, d in self._demand.items() if k != shard and now_s - d.at_s <= self.stale_s]
        return sum(d.workers for d in fresh), sum(d.held for d in fresh)
