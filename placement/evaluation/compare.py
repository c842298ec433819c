"""The fewest GPUs each policy needs to reach a target SLO attainment on a trace.

Policies compared: `aladdin`, and `rr`, `jsq`, `p2c` at the tensor-parallel degree the planner
chose for the whole trace; `p2c-default` is power-of-two choices with one TP-4 worker per
4-GPU node, what a Ray Serve user gets by giving each replica a whole node. With prefix caching
(`EngineOptions.prefix_caching`) also `prefix-affinity` (Ray Serve LLM's prefix-aware router's
rule) and `aladdin-no-prefix` (Aladdin placing as if nothing were cached, on the same caching
engines), and the ratio of Aladdin to the best of those two and jsq. For each, the
worker count is searched outward from the planner's estimate for that TP (galloping, then
bisection; attainment is taken as non-decreasing in workers, under which the answer is the
same as a search from one worker) and every simulated point is kept for the plot.

Autoscaled: the same trace with the worker count changing while it runs, Aladdin with the
planner heartbeat against p2c with Serve's queue-length rule, both at the planner's TP and
starting from the planner's worker count; GPU-hours and attainment are compared. The
GPU-hour ratio alone says nothing when the cheaper run also misses more, so the rule is run
twice: at its default target of ongoing requests per replica (`p2c`), and at the largest target
on `QUEUE_TARGET_GRID` with which it reaches the attainment target (`p2c-at-target`: the
rule tuned for this workload, its cheapest run that meets the SLO target, as the fixed-size
search takes each policy's fewest GPUs that meet it). The autoscaled goal compares Aladdin's
GPU-hours with that run's and counts as met only if Aladdin meets the target too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


from placement.planning.planner import Plan, Workload, fewest_meeting, plan
from placement.simulator.autoscale import DEFAULT_TARGET_ONGOING_REQUESTS
from placement.simulator.scenario import Scenario, run
from predictors.latency.families import ProfileFamily

DEFAULT_TP = 4  # one worker per 4-GPU node
SAME_TP_BASELINES = ("rr", "jsq", "p2c")
# compared too when the engines cache prefixes, with the policy and options each runs
PREFIX_PEERS = {"prefix-affinity": ("prefix-affinity", {}), "aladdin-no-prefix": ("aladdin", {"prefix_aware": False})}
# what prefix-aware Aladdin is measured against on such a workload (issue 15's goal)
PREFIX_GOAL_PEERS = ("prefix-affinity", "aladdin-no-prefix", "jsq")
# (policy, autoscaler) pairs of the autoscaled comparison: Aladdin's heartbeat, Serve's rule
AUTOSCALED = (("aladdin", "planner"), ("p2c", "queue-length"))
# targets of ongoing requests per replica the queue-length rule is tried with, searched outward
# from its default (placement.simulator.autoscale.DEFAULT_TARGET_ONGOING_REQUESTS)
QUEUE_TARGET_GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
# issue 4's goals: Aladdin's GPUs (GPU-hours) over the baseline's at most this
GOALS = {
    "aladdin_vs_p2c_default": 0.5,
    "aladdin_vs_best_same_tp": 0.85,
    "autoscaled_gpu_hours_aladdin_vs_queue_length": 0.7,
    "aladdin_vs_best_prefix_peer": 0.8,
}


@dataclass
class PolicyResult:
    """The fewest GPUs meeting the target (None if `max_workers` did not), and the curve."""

    policy: str
    tp: int
    min_gpus: int | None
    attainment: float | None
    curve: list[tuple[int, float]] = field(default_factory=list)  # (GPUs, attainment), by GPUs


@dataclass
class AutoscaledResult:
    """One run whose worker count an autoscaler sets; `timeline` is (time s, GPUs held) at each change."""

    policy: str
    scaler: str
    tp: int
    start_workers: int
    gpu_hours: float
    attainment: float
    workers_peak: int
    makespan_s: float
    timeline: list[tuple[float, int]] = field(default_factory=list)
    target_ongoing_requests: float | None = None  # the queue-length rule's setting


@dataclass
class Comparison:
    target: float
    planner_tp: int
    planner_gpus: int  # the planner's fewest GPUs meeting the SLOs (before its headroom)
    policies: dict[str, PolicyResult]
    autoscaled: dict[str, AutoscaledResult] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """{"policies": {name: {min_gpus, tp, attainment, curve}}, "ratios": {...}, "goals":
        {...}, "autoscaled": {policy: {scaler, gpu_hours, attainment, ...}}, "planner": {...}}
        (the autoscaled timelines are left out: they are for the plot)."""
        policies = {name: asdict(r) for name, r in self.policies.items()}
        for r in policies.values():
            r.pop("policy")
        autoscaled = {name: asdict(r) for name, r in self.autoscaled.items()}
        for r in autoscaled.values():
            r.pop("policy")
            r.pop("timeline")
        return {
            "target": self.target,
            "planner": {"tp": self.planner_tp, "gpus": self.planner_gpus},
            "policies": policies,
            "ratios": self.ratios(),
            "goals": self.goals(),
            "autoscaled": autoscaled,
        }

    def ratios(self) -> dict[str, float | None]:
        """Aladdin's GPUs over p2c-default's and over the best of rr/jsq/p2c at the same TP;
        autoscaled, Aladdin's GPU-hours over p2c's under the queue-length rule."""
        aladdin = self.policies["aladdin"].min_gpus
        default = self.policies["p2c-default"].min_gpus
        baselines = (*SAME_TP_BASELINES, "prefix-affinity")
        same_tp = [self.policies[p].min_gpus for p in baselines if p in self.policies and self.policies[p].min_gpus]
        out: dict[str, float | None] = {
            "aladdin_vs_p2c_default": aladdin / default if aladdin and default else None,
            "aladdin_vs_best_same_tp": aladdin / min(same_tp) if aladdin and same_tp else None,
        }
        if "prefix-affinity" in self.policies:
            peers = [self.policies[p].min_gpus for p in PREFIX_GOAL_PEERS if self.policies[p].min_gpus]
            out["aladdin_vs_best_prefix_peer"] = aladdin / min(peers) if aladdin and peers else None
        aladdin_scaled = self.autoscaled.get("aladdin")
        if aladdin_scaled is not None and "p2c" in self.autoscaled:
            out["autoscaled_gpu_hours_aladdin_vs_queue_length_default"] = (
                aladdin_scaled.gpu_hours / self.autoscaled["p2c"].gpu_hours
            )
        if aladdin_scaled is not None and "p2c-at-target" in self.autoscaled:
            tuned = self.autoscaled["p2c-at-target"]
            # None: the rule met the target at no setting tried, Aladdin's run is the only one that did
            out["autoscaled_gpu_hours_aladdin_vs_queue_length"] = (
                aladdin_scaled.gpu_hours / tuned.gpu_hours if tuned.attainment >= self.target else None
            )
        return out

    def goals(self) -> dict[str, bool | None]:
        """Whether each ratio is within its goal (`GOALS`); None where the ratio is. The
        autoscaled goal also needs Aladdin's attainment to be at least the queue-length run's."""
        ratios = self.ratios()
        met: dict[str, bool | None] = {
            name: None if ratios.get(name) is None else ratios[name] <= limit
            for name, limit in GOALS.items()
            if name in ratios
        }
        name = "autoscaled_gpu_hours_aladdin_vs_queue_length"
        if "p2c-at-target" in self.autoscaled and ratios.get(name) is None:
            # the tuned rule never met the target: met if Aladdin's autoscaled run did
            met[name] = self.autoscaled["aladdin"].attainment >= self.target
        elif met.get(name):
            met[name] = self.autoscaled["aladdin"].attainment >= self.target
        return met


def min_workers(
    scenario: Scenario, policy: str, target: float, max_workers: int, start: int = 1,
    policy_options: dict[str, Any] | None = None, label: str | None = None,
) -> PolicyResult:
    """Search the fewest workers whose attainment reaches `target`, starting at `start` workers
    (`label`: the result's name, default the policy's)."""
    tp = scenario.profile.tp
    seen: dict[int, float] = {}

    def meets(workers: int) -> bool:
        if workers not in seen:
            seen[workers] = run(scenario, policy, workers, policy_options=policy_options).summary.attainment
        return seen[workers] >= target

    best = fewest_meeting(meets, start, max_workers)
    curve = sorted((w * tp, a) for w, a in seen.items())
    return PolicyResult(label or policy, tp, best * tp if best else None, seen[best] if best else None, curve)


def run_autoscaled(
    scenario: Scenario, policy: str, scaler: str, start_workers: int, max_workers: int,
    policy_options: dict[str, Any] | None = None, scaler_options: dict[str, float] | None = None,
) -> AutoscaledResult:
    """Simulate `scenario` with `scaler` setting the worker count (from `start_workers`)."""
    summary = run(
        scenario, policy, start_workers, policy_options=policy_options, autoscale=scaler,
        autoscale_options={"max_workers": max_workers, **(scaler_options or {})},
    ).summary
    return AutoscaledResult(
        policy=policy,
        scaler=scaler,
        tp=scenario.profile.tp,
        start_workers=start_workers,
        gpu_hours=summary.gpu_seconds / 3600,
        attainment=summary.attainment,
        workers_peak=summary.workers_peak,
        makespan_s=summary.makespan_s,
        timeline=list(summary.gpu_timeline),
        target_ongoing_requests=(
            (scaler_options or {}).get("target_ongoing_requests", DEFAULT_TARGET_ONGOING_REQUESTS)
            if scaler == "queue-length" else None
        ),
    )


def queue_length_at_target(
    scenario: Scenario, target: float, start_workers: int, max_workers: int, default: AutoscaledResult,
    scaler_options: dict[str, float] | None = None,
) -> AutoscaledResult:
    """The queue-length rule (p2c) at the largest target of ongoing requests per replica on
    `QUEUE_TARGET_GRID` whose run reaches `target` attainment (a smaller setting: more
    replicas), searched outward from `default`, the run at the rule's default setting.
    Attainment is taken as non-increasing in the setting. If no setting reaches `target`, the
    run at the smallest one (the best the rule did)."""
    def attempt(setting: float) -> AutoscaledResult:
        options = {**(scaler_options or {}), "target_ongoing_requests": setting}
        return run_autoscaled(scenario, "p2c", "queue-length", start_workers, max_workers, None, options)

    grid = sorted(set(QUEUE_TARGET_GRID) | {default.target_ongoing_requests})
    i = grid.index(default.target_ongoing_requests)
    result = default
    if result.attainment >= target:
        for setting in grid[i + 1:]:  # cheaper settings while they still meet it
            cheaper = attempt(setting)
            if cheaper.attainment < target:
                break
            result = cheaper
        return result
    for setting in reversed(grid[:i]):  # more replicas until it meets the target
        result = attempt(setting)
        if result.attainment >= target:
            break
    return result


def _workload(base: Scenario) -> Workload:
    return Workload.of_trace(base.trace, base.slo_ttft_s, base.slo_atgt_s, base.target_attainment,
                             prefix_caching=base.engine.prefix_caching)


def _planned_workers(planned: Plan, tp: int) -> int:
    """The planner's worker count at `tp` (1 when it finds that TP unusable): the search start."""
    option = next((o for o in planned.options if o.tp == tp and o.usable), None)
    return option.needed_workers if option else 1


def compare(
    base: Scenario,
    family: ProfileFamily,
    target: float = 0.99,
    max_gpus: int = 256,
    headroom: float = 0.1,
    autoscaled: bool = True,
    aladdin_options: dict[str, Any] | None = None,
    scaler_options: dict[str, dict[str, float]] | None = None,
) -> Comparison:
    """Run the search for every compared policy (and, if `autoscaled`, the autoscaled pair);
    `base` gives the trace, SLOs and settings. `aladdin_options` go to the Aladdin policy,
    `scaler_options[mode]` to that autoscaler (`planner`, `queue-length`). Aladdin's budget
    adapts to `target`."""
    base = replace(base, target_attainment=target)
    planned = plan(family, _workload(base), headroom=headroom, chunked=base.engine.chunked_prefill)
    chosen = planned.choice
    if chosen is None:
        raise ValueError("the planner finds no TP degree that meets these SLOs")
    at_tp = base.with_profile(family.profile(chosen.tp))
    max_at_tp = max_gpus // chosen.tp
    options = {"aladdin": aladdin_options}
    results = {
        name: min_workers(at_tp, name, target, max_at_tp, chosen.needed_workers, options.get(name))
        for name in ("aladdin", *SAME_TP_BASELINES)
    }
    if base.engine.prefix_caching:
        for name, (policy, peer_options) in PREFIX_PEERS.items():
            if policy == "aladdin":
                peer_options = {**(aladdin_options or {}), **peer_options}
            results[name] = min_workers(at_tp, policy, target, max_at_tp, chosen.needed_workers, peer_options, name)
    default = min_workers(
        base.with_profile(family.profile(DEFAULT_TP)), "p2c", target, max_gpus // DEFAULT_TP,
        _planned_workers(planned, DEFAULT_TP),
    )
    default.policy = "p2c-default"
    results["p2c-default"] = default
    scaled = (
        {
            policy: run_autoscaled(
                at_tp, policy, scaler, chosen.workers, max_at_tp, options.get(policy), (scaler_options or {}).get(scaler)
            )
            for policy, scaler in AUTOSCALED
        }
        if autoscaled
        else {}
    )
    if autoscaled:
        scaled["p2c-at-target"] = queue_length_at_target(
            at_tp, target, chosen.workers, max_at_tp, scaled["p2c"], (scaler_options or {}).get("queue-length"))
    return Comparison(target, chosen.tp, chosen.needed_gpus, results, scaled)
