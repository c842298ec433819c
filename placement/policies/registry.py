"""Policies by name, for the serving config and the simulator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from placement.closed_loop import ClosedLoop
from placement.packing_budget import DEFAULT_TARGET_ATTAINMENT, PackingBudget

from placement.policies.aladdin import AladdinPolicy
from placement.policies.baselines import (
    JoinShortestQueuePolicy,
    LeastKVLoadPolicy,
    PowerOfTwoPolicy,
    PrefixAffinityPolicy,
    RoundRobinPolicy,
)
from placement.policy import PlacementPolicy
from placement.reply_lengths import ReplyLengths
from placement.sharding import ShardedPolicy

_FACTORIES: dict[str, Callable[..., PlacementPolicy]] = {
    "aladdin": lambda seed, **options: AladdinPolicy(**options),
    "rr": lambda seed, **options: RoundRobinPolicy(**options),
    "jsq": lambda seed, **options: JoinShortestQueuePolicy(**options),
    "p2c": lambda seed, **options: PowerOfTwoPolicy(seed=seed, **options),
    "least-kv": lambda seed, **options: LeastKVLoadPolicy(**options),
    "prefix-affinity": lambda seed, **options: PrefixAffinityPolicy(seed=seed, **options),
}

POLICY_NAMES: tuple[str, ...] = tuple(_FACTORIES)
# the policies that promise each request its SLOs: they pack to a budget the closed loop adapts,
# and only they can admit (the others place whatever comes)
SLO_AWARE: frozenset[str] = frozenset({"aladdin"})


def is_slo_aware(name: str) -> bool:
    """Whether policy `name` promises SLOs (closed loop, packing budget, admission)."""
    return name in SLO_AWARE


def make_policy(name: str, seed: int = 0, **options: Any) -> PlacementPolicy:
    """A new policy object: `aladdin`, `rr`, `jsq`, `p2c`, `least-kv` or `prefix-affinity`. `seed` drives the
    randomized ones; `options` go to the policy's constructor (e.g. `on_infeasible` for aladdin)."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown placement policy {name!r}; valid: {', '.join(POLICY_NAMES)}") from None
    return factory(seed, **options)


@dataclass(frozen=True)
class Policies:
    """The policy objects one cluster (live or simulated) runs: its placement policy and, for
    aladdin, the closed loop over its packing budget and the same policy in "wait" mode for
    SLO-aware admission (None without admission)."""

    policy: PlacementPolicy
    loop: ClosedLoop | None = None
    wait_policy: PlacementPolicy | None = None
    last_chance_policy: PlacementPolicy | None = None  # admission's, for a request that cannot wait


def make_policies(
    name: str, seed: int = 0, target_attainment: float = DEFAULT_TARGET_ATTAINMENT, atgt_margin: float | None = None,
    replies: ReplyLengths | None = None, admission: bool = False, shards: int = 1, **options: Any,
) -> Policies:
    """Fresh policy objects for a cluster. Aladdin packs to one budget
    (`PackingBudget.for_target`) shared by its policy (least violation where nothing fits),
    admission's wait-mode twins (the second for requests at their last chance) and the closed
    loop that adapts it; the others have none, and admission is aladdin's alone. `options` go to
    the policies' constructors. With `shards` > 1 each is a `placement.sharding.ShardedPolicy`
    of that many copies."""
    if not is_slo_aware(name):
        if admission:
            raise ValueError("admission is the aladdin policy's (the server admits only under it)")
        if atgt_margin is not None:
            raise ValueError("atgt_margin is the aladdin policy's")
        return Policies(_sharded(name, seed, shards, options))
    budget = PackingBudget.for_target(target_attainment, atgt_margin, replies)
    # a request no worker can take would wait forever under "wait" on a cluster that cannot
    # grow: placement takes the least-violating worker; only admission waits
    options = {"on_infeasible": "least-violation", **options, "budget": budget}
    if not admission:
        return Policies(_sharded(name, seed, shards, options), ClosedLoop(budget))
    wait = {**options, "on_infeasible": "wait"}
    return Policies(_sharded(name, seed, shards, options), ClosedLoop(budget), _sharded(name, seed, shards, wait),
                    _sharded(name, seed, shards, {**wait, "last_chance": True}))


def _sharded(name: str, seed: int, shards: int, options: dict[str, Any]) -> PlacementPolicy:
    if shards < 1:
        raise ValueError("shards must be >= 1")
    if shards == 1:
        return make_policy(name, seed, **options)
    return ShardedPolicy(lambda k: make_policy(name, seed + k, **options), shards, seed=seed)
