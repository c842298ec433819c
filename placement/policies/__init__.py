"""Placement policies: Aladdin's best fit and the baselines, created by name with `make_policy`;
`make_policies` builds what one cluster (live or simulated) runs, Aladdin's closed loop included."""

from placement.policies.aladdin import AladdinPolicy
from placement.policies.baselines import (
    JoinShortestQueuePolicy,
    LeastKVLoadPolicy,
    PowerOfTwoPolicy,
    PrefixAffinityPolicy,
    RoundRobinPolicy,
)
from placement.policies.registry import POLICY_NAMES, Policies, is_slo_aware, make_policies, make_policy

__all__ = [
    "POLICY_NAMES",
    "AladdinPolicy",
    "JoinShortestQueuePolicy",
    "LeastKVLoadPolicy",
    "PowerOfTwoPolicy",
    "Policies",
    "PrefixAffinityPolicy",
    "RoundRobinPolicy",
    "is_slo_aware",
    "make_policies",
    "make_policy",
]
