"""One simulation set up by names: a trace fitted to the profile's context, a policy, a queue
order and a length model built fresh for each run (they are stateful), optional autoscaling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from placement.admission import AdmissionLimits
from placement.packing_budget import DEFAULT_TARGET_ATTAINMENT
from placement.policies.registry import make_policies
from placement.queue_order import make_queue_order
from placement.reply_lengths import ReplyLengths
from placement.simulator.autoscale import make_autoscaler
from placement.simulator.cluster import Cluster, SimConfig, SimResult
from placement.simulator.length_model import DEFAULT_LENGTH_MODEL, make_length_model
from placement.simulator.worker_engine import EngineOptions
from placement.traces import TraceRequest, truncate_to_context
from predictors.latency.profile import WorkerProfile


@dataclass(frozen=True)
class Scenario:
    """Everything about a run except the policy and the worker count."""

    trace: Sequence[TraceRequest]
    profile: WorkerProfile
    slo_ttft_s: float
    slo_atgt_s: float
    queue_order: str = "fifo"
    length_model: str = DEFAULT_LENGTH_MODEL
    mae_ratio: float = 0.3
    coverage: float = 0.9
    engine: EngineOptions = EngineOptions()
    warmup_s: float = 0.0
    rebalance: bool = True
    seed: int = 0
    truncated: int = 0  # requests changed to fit max_model_len
    admission: AdmissionLimits | None = None  # SLO-aware admission as served (aladdin only)
    target_attainment: float = DEFAULT_TARGET_ATTAINMENT  # what Aladdin's budget adapts to
    timing_profile: WorkerProfile | None = None  # the workers' real latencies, if not `profile`'s
    shards: int = 1  # placement shards (placement.sharding): K policies over a partition each
    placement_delay_s: float = 0.0  # arrival to placement (the live path's delay); TTFTs count from arrival

    @classmethod
    def fitted(cls, trace: Sequence[TraceRequest], profile: WorkerProfile, **settings: Any) -> Scenario:
        """A scenario whose requests are truncated to the profile's max_model_len (counted)."""
        fitted, truncated = truncate_to_context(list(trace), profile.max_model_len)
        return cls(trace=fitted, profile=profile, truncated=truncated, **settings)

    def with_profile(self, profile: WorkerProfile) -> Scenario:
        """The same scenario on another profile (re-truncated to its context length); a timing
        profile of another TP degree does not carry over."""
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("trace", "profile", "truncated")}
        if self.timing_profile is not None and self.timing_profile.tp != profile.tp:
            fields["timing_profile"] = None
        return Scenario.fitted(self.trace, profile, **fields)


def cluster_parts(scenario: Scenario, policy: str, policy_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `Cluster` arguments a scenario fixes apart from the worker count and autoscaling:
    fresh policy, queue order, length model and closed-loop objects (they are stateful), built
    as the server builds them (`make_policies`); Aladdin's reply lengths are seeded with the
    trace's, as error-aware rebalancing's reference sample is, and then learned."""
    options = dict(policy_options or {})
    replies = ReplyLengths.from_lengths(r.output_len for r in scenario.trace) if policy == "aladdin" else None
    parts = make_policies(policy, seed=scenario.seed, target_attainment=scenario.target_attainment,
                          atgt_margin=options.pop("atgt_margin", None), replies=replies,
                          admission=scenario.admission is not None, shards=scenario.shards, **options)
    return {
        "trace": scenario.trace,
        "profile": scenario.profile,
        "policy": parts.policy,
        "loop": parts.loop,
        "queue_order": make_queue_order(scenario.queue_order),
        "lengths": make_length_model(
            scenario.length_model, seed=scenario.seed, mae_ratio=scenario.mae_ratio, coverage=scenario.coverage
        ),
        "truncated": scenario.truncated,
        "wait_policy": parts.wait_policy,
        "last_chance_policy": parts.last_chance_policy,
    }


def sim_config(scenario: Scenario, workers: int) -> SimConfig:
    """The scenario's SLOs and engine settings with `workers` starting workers."""
    return SimConfig(
        slo_ttft_s=scenario.slo_ttft_s,
        slo_atgt_s=scenario.slo_atgt_s,
        workers=workers,
        engine=scenario.engine,
        warmup_s=scenario.warmup_s,
        rebalance=scenario.rebalance,
        admission=scenario.admission,
        timing_profile=scenario.timing_profile,
        placement_delay_s=scenario.placement_delay_s,
    )


def run(
    scenario: Scenario,
    policy: str,
    workers: int,
    *,
    policy_options: dict[str, Any] | None = None,
    autoscale: str | None = None,
    autoscale_options: dict[str, float] | None = None,
) -> SimResult:
    """Simulate `scenario` under the named policy on `workers` workers (the start count when
    autoscaling)."""
    parts = cluster_parts(scenario, policy, policy_options)
    scaler_options = dict(autoscale_options or {})
    if autoscale == "planner":
        # plan for the budget the policy packs to and the latencies it has learned, as they adapt
        scaler_options.setdefault("loop", parts["loop"])
        scaler_options.setdefault("token_budget", scenario.engine.chunk_budget(scenario.profile))
    cluster = Cluster(
        **parts,
        config=sim_config(scenario, workers),
        autoscaler=make_autoscaler(autoscale, **scaler_options) if autoscale else None,
    )
    return cluster.run()
