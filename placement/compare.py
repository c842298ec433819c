"""The fewest GPUs each policy needs to reach a target SLO attainment on a trace.

Policies compared: `aladdin`, and `rr`, `jsq`, `p2c` at the tensor-parallel degree the planner
chose for the whole trace; `p2c-default` is power-of-two choices with one TP-4 worker per
4-GPU node, what a Ray Serve user gets by giving each replica a whole node. For each, the
worker count is searched (doubling, then bisection; attainment is taken as non-decreasing in
workers) and every simulated point is kept for the plot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from placement.planner import Workload, plan
from placement.simulator.scenario import Scenario, run
from predictors.latency.families import ProfileFamily

DEFAULT_TP = 4  # one worker per 4-GPU node


@dataclass
class PolicyResult:
    """The fewest GPUs meeting the target (None if `max_workers` did not), and the curve."""

    policy: str
    tp: int
    min_gpus: int | None
    attainment: float | None
    curve: list[tuple[int, float]] = field(default_factory=list)  # (GPUs, attainment), by GPUs


@dataclass
class Comparison:
    target: float
    planner_tp: int
    planner_gpus: int
    policies: dict[str, PolicyResult]

    def to_dict(self) -> dict:
        """{"policies": {name: {min_gpus, tp, attainment, curve}}, "ratios": {...}, "planner": {...}}."""
        policies = {name: asdict(r) for name, r in self.policies.items()}
        for r in policies.values():
            r.pop("policy")
        return {
            "target": self.target,
            "planner": {"tp": self.planner_tp, "gpus": self.planner_gpus},
            "policies": policies,
            "ratios": self.ratios(),
        }

    def ratios(self) -> dict[str, float | None]:
        """Aladdin's GPUs over p2c-default's, and over the best of rr/jsq/p2c at the same TP."""
        aladdin = self.policies["aladdin"].min_gpus
        default = self.policies["p2c-default"].min_gpus
        same_tp = [self.policies[p].min_gpus for p in ("rr", "jsq", "p2c") if self.policies[p].min_gpus]
        return {
            "aladdin_vs_p2c_default": aladdin / default if aladdin and default else None,
            "aladdin_vs_best_same_tp": aladdin / min(same_tp) if aladdin and same_tp else None,
        }


def min_workers(scenario: Scenario, policy: str, target: float, max_workers: int) -> PolicyResult:
    """Search the fewest workers whose attainment reaches `target`."""
    tp = scenario.profile.tp
    seen: dict[int, float] = {}

    def attainment(workers: int) -> float:
        if workers not in seen:
            seen[workers] = run(scenario, policy, workers).summary.attainment
        return seen[workers]

    hi = 1
    while attainment(hi) < target and hi < max_workers:
        hi = min(2 * hi, max_workers)
    if attainment(hi) < target:
        best = None
    else:
        lo = hi // 2  # misses the target (or 0)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if attainment(mid) >= target:
                hi = mid
            else:
                lo = mid
        best = hi
    curve = sorted((w * tp, a) for w, a in seen.items())
    return PolicyResult(policy, tp, best * tp if best else None, seen[best] if best else None, curve)


def compare(
    base: Scenario, family: ProfileFamily, target: float = 0.99, max_gpus: int = 256, headroom: float = 0.1
) -> Comparison:
    """Run the search for every compared policy; `base` gives the trace, SLOs and settings."""
    trace = base.trace
    duration = max(trace[-1].arrival_s, 1e-9)
    workload = Workload(
        rate_per_s=len(trace) / duration,
        input_lens=np.array([r.input_len for r in trace]),
        output_lens=np.array([r.output_len for r in trace]),
        slo_ttft_s=base.slo_ttft_s,
        slo_atgt_s=base.slo_atgt_s,
    )
    chosen = plan(family, workload, headroom=headroom).choice
    if chosen is None:
        raise ValueError("the planner finds no TP degree that meets these SLOs")
    at_tp = base.with_profile(family.profile(chosen.tp))
    results = {
        name: min_workers(at_tp, name, target, max_gpus // chosen.tp) for name in ("aladdin", "rr", "jsq", "p2c")
    }
    default = min_workers(base.with_profile(family.profile(DEFAULT_TP)), "p2c", target, max_gpus // DEFAULT_TP)
    default.policy = "p2c-default"
    results["p2c-default"] = default
    return Comparison(target, chosen.tp, chosen.gpus, results)
