"""Policies by name, for the serving config and the simulator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from placement.policies.aladdin import AladdinPolicy
from placement.policies.baselines import (
    JoinShortestQueuePolicy,
    LeastKVLoadPolicy,
    PowerOfTwoPolicy,
    RoundRobinPolicy,
)
from placement.policy import PlacementPolicy

_FACTORIES: dict[str, Callable[..., PlacementPolicy]] = {
    "aladdin": lambda seed, **options: AladdinPolicy(**options),
    "rr": lambda seed, **options: RoundRobinPolicy(**options),
    "jsq": lambda seed, **options: JoinShortestQueuePolicy(**options),
    "p2c": lambda seed, **options: PowerOfTwoPolicy(seed=seed, **options),
    "least-kv": lambda seed, **options: LeastKVLoadPolicy(**options),
}

POLICY_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def make_policy(name: str, seed: int = 0, **options: Any) -> PlacementPolicy:
    """A new policy object: `aladdin`, `rr`, `jsq`, `p2c` or `least-kv`. `seed` drives the
    randomized ones; `options` go to the policy's constructor (e.g. `on_infeasible` for aladdin)."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown placement policy {name!r}; valid: {', '.join(POLICY_NAMES)}") from None
    return factory(seed, **options)
