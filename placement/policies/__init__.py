"""Placement policies: Aladdin's best fit and the baselines, created by name with `make_policy`."""

from placement.policies.aladdin import AladdinPolicy
from placement.policies.baselines import (
    JoinShortestQueuePolicy,
    LeastKVLoadPolicy,
    PowerOfTwoPolicy,
    RoundRobinPolicy,
)
from placement.policies.registry import POLICY_NAMES, make_policy

__all__ = [
    "POLICY_NAMES",
    "AladdinPolicy",
    "JoinShortestQueuePolicy",
    "LeastKVLoadPolicy",
    "PowerOfTwoPolicy",
    "RoundRobinPolicy",
    "make_policy",
]
