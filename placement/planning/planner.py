"""Minimal-GPU planner: for each tensor-parallel degree, the highest arrival rate one worker
sustains within the SLOs, then the workers and GPUs the workload needs; the cheapest wins.

Per-worker model (a closed-form queueing estimate, not a simulation), for one worker taking a
Poisson stream at rate lam of requests with the workload's prompt lengths l and reply lengths L,
packed to the ATGT budget b (the SLO, or the share of it the policy packs to):
- prefill: each prompt is one prefill of S = prefill_time_s([l]) (with prefix caching, of the
  part h a cache is expected to hold: the tokens l - h attending over l); the prefills use a share
  rho = lam E[S] of the worker's time (must stay < 1). With chunked prefill (a token budget B
  per iteration) a prompt also waits the decoding batch's step in each of its ceil(l / B)
  iterations: its TTFT service is S' = S + ceil(l / B) x step.
- decode: N requests decode together; each step takes tau(N) = decode_step_s(N, N c) / (1 - rho)
  on average (stretched by the interleaved prefills: `placement.interference.token_interval_s`,
  which feasibility uses too), with c = E[L (l + L/2)] / E[L] the time-average context of a
  resident. By Little's law N = lam E[L] tau(N); N is the smallest root (bisection).
- ATGT on average: tau(N) <= b.
- ATGT per request (`placement.interference`): a reply of L tokens has (L - 1) x (b - step)
  of decode slack, so it survives floor(that / s) prefill stalls of s = E[S] / E[iterations]
  (a chunked prompt stalls each of its iterations by its share of the prefill); the stalls
  landing on its worker during its decode, (L - 1) tau(N) long, are Poisson with mean
  lam E[iterations] (L - 1) tau(N).
  The share of replies that see more, averaged over the workload's lengths, is at most the
  SLO's part of the misses the target allows. (The policy's stall test steers prompts away
  from workers with fragile residents, which Poisson arrivals at one worker do not: this is
  what a placement blind to it would see, an upper bound for Aladdin.)
- KV: N k <= capacity, with k = E[L (l + L)] / E[L] the time-average final size of a resident
  (Aladdin reserves each request's final size for its whole stay).
- TTFT: the M/G/1 wait, 0 with probability 1 - rho and otherwise about exponential with mean
  Wq / rho, Wq = lam E[S'^2] / (2 (1 - rho)); the share of requests whose wait exceeds their
  TTFT SLO minus S', averaged over the prompt lengths, is at most the TTFT's part of the misses.
Every constraint tightens as lam grows, so the highest rate is found by bisection. Arrivals are
not steady: the rate planned for adds `PEAK_Z` standard deviations of the rate's variation
beyond Poisson's (which the model above already has) over windows as long as a request's SLOs
span (the TTFT SLO, or E[L] x the ATGT SLO if longer), when the arrival times are known. Then workers = ceil(rate / per-worker rate x (1 + headroom)), GPUs = workers x TP;
the fewest GPUs win, ties to the lower TP. TP degrees above the GPUs of one node are skipped (a
TP group stays inside a node).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from placement.interference import stall_breaking_lengths, token_interval_s
from placement.packing_budget import DEFAULT_TARGET_ATTAINMENT
from placement.prefix_cache import Prefix, pooled_hits
from placement.traces import TraceRequest, trace_prefix
from predictors.latency.families import ProfileFamily
from predictors.latency.profile import WorkerProfile, vllm_token_budget

BISECTION_STEPS = 60
MAX_WORKERS = 1 << 20  # the search's upper end (a workload needing more gets at least this)
# The rate planned for: the windowed arrival rate this many standard deviations of its
# variation beyond Poisson's above its mean (2.05: the 98th percentile of a normal; arrivals
# in the busiest 2 % of windows are beyond a 0.99 target's miss budget in any case).
PEAK_Z = 2.05
# rounds of the prefix-hit fixed point (workers -> their caches' room -> hits -> workers)
PREFIX_ROUNDS = 6


@dataclass(frozen=True)
class Workload:
    """What must be served: the arrival rate, sample lengths (tokens) and the SLOs."""

    rate_per_s: float
    input_lens: np.ndarray
    output_lens: np.ndarray
    slo_ttft_s: float
    slo_atgt_s: float
    target_attainment: float = DEFAULT_TARGET_ATTAINMENT
    arrival_s: np.ndarray | None = None  # arrival times, when known: how steady the rate is
    # prompt tokens each request is expected to take from a prefix cache (None: none), or the
    # prompts' prefixes, from which the planner works them out for the caches it plans
    cached_lens: np.ndarray | None = None
    prefixes: tuple[Prefix | None, ...] | None = None

    @classmethod
    def of_trace(cls, trace: Sequence[TraceRequest], slo_ttft_s: float, slo_atgt_s: float,
                 target_attainment: float = DEFAULT_TARGET_ATTAINMENT, prefix_caching: bool = False) -> Workload:
        """What a trace asks for: its mean rate, lengths and arrival times (how steady the rate
        is), and with prefix caching its prompts' prefixes (the planner works out the hits its
        planned workers' caches can give). `compare`'s planner and `aladdin plan` both read
        traces through this."""
        return cls(
            rate_per_s=len(trace) / max(trace[-1].arrival_s, 1e-9),
            input_lens=np.array([r.input_len for r in trace]),
            output_lens=np.array([r.output_len for r in trace]),
            slo_ttft_s=slo_ttft_s,
            slo_atgt_s=slo_atgt_s,
            target_attainment=target_attainment,
            arrival_s=np.array([r.arrival_s for r in trace]),
            prefixes=tuple(trace_prefix(r) for r in trace) if prefix_caching else None,
        )

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.slo_ttft_s <= 0 or self.slo_atgt_s <= 0:
            raise ValueError("rate and SLOs must be > 0")
        if len(self.input_lens) == 0 or len(self.input_lens) != len(self.output_lens):
            raise ValueError("need equally many (>= 1) input and output lengths")

    @property
    def miss_budget(self) -> float:
        """The misses one SLO may have: half of what the target allows."""
        return (1.0 - self.target_attainment) / 2

    def arrival_scv(self) -> float:
        """Squared coefficient of variation of the inter-arrival gaps (1: Poisson, the default
        without arrival times)."""
        if self.arrival_s is None or len(self.arrival_s) < 3:
            return 1.0
        gaps = np.diff(np.sort(self.arrival_s))
        mean = float(gaps.mean())
        return float(gaps.var()) / (mean * mean) if mean > 0 else 1.0

    def planning_rate_per_s(self) -> float:
        """The rate to plan for (see the module docstring), when the arrival times cover at
        least two windows (else the mean rate)."""
        window = max(self.slo_ttft_s, float(np.mean(self.output_lens)) * self.slo_atgt_s)
        if self.arrival_s is None or len(self.arrival_s) < 2:
            return self.rate_per_s
        start, end = float(np.min(self.arrival_s)), float(np.max(self.arrival_s))
        if end - start < 2 * window:
            return self.rate_per_s
        counts = np.histogram(self.arrival_s, bins=np.arange(start, end + window, window))[0][:-1]
        mean, var = float(counts.mean()), float(counts.var())
        # Poisson's own fluctuation is the queueing model's; only what goes beyond it is planned for
        extra = math.sqrt(max(0.0, var - mean))
        # never above the busiest window seen: a window where the rate stepped down is not bursty
        return max(self.rate_per_s, min(mean + PEAK_Z * extra, float(counts.max())) / window)


@dataclass(frozen=True)
class WorkerLoad:
    """One worker's estimated operating point at an arrival rate."""

    rate_per_s: float
    residents: float
    kv_tokens: float
    atgt_s: float
    ttft_s: float  # mean
    prefill_share: float
    stable: bool  # False when prefill or decode cannot keep up at this rate
    step_s: float = 0.0  # the decode step of the batch, without the prefills' stretch


@dataclass(frozen=True)
class TPOption:
    """The reasoning for one tensor-parallel degree."""

    tp: int
    usable: bool
    reason: str
    kv_capacity_tokens: int
    max_rate_per_worker: float = 0.0
    binding: str = ""  # the constraint that limits the per-worker rate: kv, atgt, ttft or stability
    at_max_rate: WorkerLoad | None = None
    workers: int = 0  # with the headroom
    gpus: int = 0
    needed_workers: int = 0  # the fewest that take the workload within the SLOs (no headroom)

    @property
    def needed_gpus(self) -> int:
        return self.needed_workers * self.tp


@dataclass(frozen=True)
class Plan:
    """The chosen configuration (None if no TP degree can meet the SLOs) and every option."""

    rate_per_s: float
    slo_ttft_s: float
    slo_atgt_s: float
    headroom: float
    gpus_per_node: int
    choice: TPOption | None
    options: list[TPOption] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class _WorkerModel:
    """The per-worker estimate for one profile and one length sample (see the module docstring)."""

    def __init__(self, profile: WorkerProfile, workload: Workload, token_budget: int | None = None) -> None:
        self.profile = profile
        self.workload = workload
        inputs = np.asarray(workload.input_lens, dtype=float)
        outputs = np.maximum(np.asarray(workload.output_lens, dtype=float), 1.0)
        cached = np.zeros(len(inputs), dtype=int) if workload.cached_lens is None else workload.cached_lens
        # a prompt's prefill computes what the prefix cache does not hold
        self.prefill_s = np.array([profile.prefill.uncached_time_s(int(n), int(c)) for n, c in zip(inputs, cached)])
        self.prefill_mean_s = float(self.prefill_s.mean())
        # the decode steps each prompt's TTFT waits for: one per chunked iteration
        self.iterations = np.ceil((inputs - cached) / token_budget) if token_budget else np.zeros_like(inputs)
        # the stalls a prompt's prefill makes: one per chunked iteration (one without chunking)
        self.stalls_per_prompt = float(np.maximum(self.iterations, 1.0).mean())
        self.output_mean = float(outputs.mean())
        self.context_per_resident = float((outputs * (inputs + outputs / 2)).mean() / self.output_mean)
        self.final_per_resident = float((outputs * (inputs + outputs)).mean() / self.output_mean)
        self.replies = outputs[outputs > 1]  # a one-token reply has no ATGT
        self.arrival_scv = workload.arrival_scv()

    def step_s(self, residents: float, prefill_share: float) -> float:
        step = self.profile.decode_step_s(residents, residents * self.context_per_resident)
        return token_interval_s(step, prefill_share)

    def load(self, rate: float) -> WorkerLoad:
        rho = rate * self.prefill_mean_s
        if rho >= 1:
            return WorkerLoad(rate, math.inf, math.inf, math.inf, math.inf, rho, False, math.inf)
        # smallest N >= 0 with N >= rate E[o] tau(N); the KV cap bounds where to look
        demand = rate * self.output_mean
        hi = self.profile.kv.capacity_tokens / self.final_per_resident
        stable = hi >= demand * self.step_s(hi, rho)
        residents = hi
        if stable:
            lo = 0.0
            for _ in range(BISECTION_STEPS):
                mid = (lo + hi) / 2
                if mid >= demand * self.step_s(max(mid, 1.0), rho):
                    hi = mid
                else:
                    lo = mid
            residents = hi
        batch = max(residents, 1.0)
        atgt = self.step_s(batch, rho)
        step = atgt * (1 - rho)
        service = self.prefill_s + self.iterations * step
        wait = rate * float((service * service).mean()) / (2 * (1 - rho))
        ttft = float(service.mean()) + wait
        return WorkerLoad(rate, residents, residents * self.final_per_resident, atgt, ttft, rho, stable, step)

    def violations(self, load: WorkerLoad) -> dict[str, float]:
        """How far each constraint is from its limit (> 1 means violated)."""
        w = self.workload
        return {
            "stability": 0.0 if load.stable else math.inf,
            "kv": load.kv_tokens / self.profile.kv.capacity_tokens,
            "atgt": load.atgt_s / w.slo_atgt_s,
        }

    def fragile_s(self, load: WorkerLoad) -> tuple[float, float]:
        """How long a fresh resident stays fragile (one more chunk's stall would break its
        ATGT with probability above the policy's stall risk) and the share of replies short
        enough to break at all (`placement.interference.stall_breaking_lengths`)."""
        stall = self.prefill_mean_s / self.stalls_per_prompt
        _, hi = stall_breaking_lengths(0.0, 0, load.step_s, self.workload.slo_atgt_s, stall)
        if not self.replies.size or math.isinf(hi):
            return 0.0, 0.0
        risk = (1.0 - self.workload.target_attainment) / 8  # the policy's per-placement stall risk
        fragile = 0
        for decoded in range(int(hi)):
            alive = self.replies > decoded + 1
            if not alive.any() or ((self.replies < hi) & alive).sum() / alive.sum() <= risk:
                break
            fragile += 1
        return fragile * load.atgt_s, float(((self.replies > 1) & (self.replies < hi)).mean())

    def pooled_misses(self, rate: float, workers: int) -> tuple[float, float]:
        """(TTFT, ATGT) shares missed when `workers` workers take `rate` together, dispatched
        to whichever can take a prompt (see the module docstring)."""
        load = self.load(rate / workers)
        if not load.stable:
            return 1.0, 1.0
        fragile_s, breakable = self.fragile_s(load)
        service = self.prefill_s + self.iterations * load.step_s
        slot_s = float(service.mean()) + fragile_s
        offered = rate * slot_s
        if offered >= workers:
            return 1.0, 1.0
        waits = erlang_c(workers, offered)
        slack = np.maximum(self.workload.slo_ttft_s - service, 0.0)
        # burstier arrivals than Poisson wait longer, in proportion to (c_a^2 + c_s^2) / 2
        # (Allen-Cunneen; service taken as exponential, c_s^2 = 1)
        decay = (workers - offered) / slot_s * 2 / (self.arrival_scv + 1)
        ttft = float(np.where(service > self.workload.slo_ttft_s, 1.0, waits * np.exp(-decay * slack)).mean())
        return ttft, waits * breakable if fragile_s > 0 else 0.0

    def max_rate(self) -> tuple[float, WorkerLoad | None, str]:
        """The highest rate meeting every constraint, its load and the binding constraint."""
        lo, hi = 0.0, 1.0 / self.prefill_mean_s
        floor = self.violations(self.load(1e-9 * hi))
        if max(floor.values()) > 1:
            return 0.0, None, max(floor, key=floor.get)
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2
            if max(self.violations(self.load(mid)).values()) <= 1:
                lo = mid
            else:
                hi = mid
        beyond = self.violations(self.load(hi))
        return lo, self.load(lo), max(beyond, key=beyond.get)


def erlang_c(servers: int, offered: float) -> float:
    """Probability an arrival waits in an M/M/c queue with `servers` and `offered` load
    (Erlang C, from the Erlang B recursion, stable for thousands of servers)."""
    if offered <= 0:
        return 0.0
    if offered >= servers:
        return 1.0
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = offered * blocking / (k + offered * blocking)
    return servers * blocking / (servers - offered * (1 - blocking))


def plan_tp(profile: WorkerProfile, workload: Workload, headroom: float, token_budget: int | None = None) -> TPOption:
    """The option for one profile: the fewest workers that take the workload within the SLOs,
    with `headroom` on top. `token_budget`: the engine's tokens per iteration with chunked
    prefill (None: prefill-first). With the prompts' prefixes, the hits are those of one cache
    as large as the planned workers' KV left free by their residents (what affinity can reuse
    at best), found by iterating: fewer workers hold less, so they hit less and need more."""
    if workload.prefixes is None:
        return _plan_tp(profile, workload, headroom, token_budget)
    prompts = list(zip(workload.prefixes, (int(n) for n in workload.input_lens)))
    room = math.inf
    seen: set[float] = set()
    while room not in seen and len(seen) < PREFIX_ROUNDS:
        seen.add(room)
        cached = np.array(pooled_hits(prompts, room))
        option = _plan_tp(profile, replace(workload, cached_lens=cached, prefixes=None), headroom, token_budget)
        if not option.usable or option.at_max_rate is None:
            return option
        free = max(0.0, profile.kv.capacity_tokens - option.at_max_rate.kv_tokens)
        room = option.needed_workers * free
    return option


def _plan_tp(profile: WorkerProfile, workload: Workload, headroom: float, token_budget: int | None) -> TPOption:
    capacity = profile.kv.capacity_tokens
    if capacity == 0:
        return TPOption(profile.tp, False, "no KV cache", capacity)
    model = _WorkerModel(profile, workload, token_budget)
    rate, load, binding = model.max_rate()
    if load is None:
        return TPOption(profile.tp, False, f"{binding} SLO missed even at zero load", capacity, binding=binding)
    demand = workload.planning_rate_per_s()
    budget = workload.miss_budget

    least = max(1, math.ceil(demand / rate))  # fewer break a per-worker constraint

    def enough(workers: int) -> bool:
        return workers >= least and max(model.pooled_misses(demand, workers)) <= budget

    # beyond MAX_WORKERS the answer is "more than any cluster": the caller's maximum bounds it
    needed = fewest_meeting(enough, least, MAX_WORKERS) or max(least, MAX_WORKERS)
    if needed > least:
        ttft, atgt = model.pooled_misses(demand, needed - 1)
        binding = "ttft" if ttft >= atgt else "stall"
    workers = math.ceil(needed * (1 + headroom))
    per_worker = demand / needed
    return TPOption(
        tp=profile.tp, usable=True, reason=f"{per_worker:.3g} req/s per worker, limited by {binding}",
        kv_capacity_tokens=capacity, max_rate_per_worker=per_worker, binding=binding,
        at_max_rate=model.load(per_worker), workers=workers, gpus=workers * profile.tp, needed_workers=needed,
    )


def fewest_meeting(meets: Callable[[int], bool], start: int, upper: int) -> int | None:
    """The smallest n in [1, upper] with meets(n), for a `meets` that is monotone in n, probing
    outward from `start` at distances 1, 2, 4, ... and then bisecting (so a good `start` costs
    about 2 log2 |answer - start| probes). None if meets(upper) is false."""
    start = min(max(start, 1), upper)
    if meets(start):
        lo, hi, step = 0, start, 1  # meets(lo) is false (lo = 0: nothing below 1), meets(hi) true
        while start - step >= 1:
            if not meets(start - step):
                lo = start - step
                break
            hi, step = start - step, 2 * step
    else:
        lo, hi, step = start, None, 1
        while hi is None:
            probe = min(start + step, upper)
            if meets(probe):
                hi = probe
            elif probe == upper:
                return None
            else:
                lo, step = probe, 2 * step
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if meets(mid):
            hi = mid
        else:
            lo = mid
    return hi


def plan(
    family: ProfileFamily, workload: Workload, headroom: float = 0.1, gpus_per_node: int = 8, chunked: bool = True
) -> Plan:
    """Evaluate every TP degree of `family` and choose the fewest GPUs (ties: lower TP), for
    engines with vLLM's chunked prefill at its default token budget (`chunked`) or without."""
    if headroom < 0 or gpus_per_node < 1:
        raise ValueError("need headroom >= 0 and gpus_per_node >= 1")
    options = []
    for tp in family.tps:
        profile = family.profile(tp)
        if tp > gpus_per_node:
            options.append(
                TPOption(tp, False, f"tp {tp} exceeds {gpus_per_node} GPUs per node", profile.kv.capacity_tokens)
            )
        else:
            options.append(plan_tp(profile, workload, headroom, vllm_token_budget(profile) if chunked else None))
    usable = [o for o in options if o.usable]
    choice = min(usable, key=lambda o: (o.gpus, o.tp), default=None)
    return Plan(
        rate_per_s=workload.rate_per_s, slo_ttft_s=workload.slo_ttft_s, slo_atgt_s=workload.slo_atgt_s,
        headroom=headroom, gpus_per_node=gpus_per_node, choice=choice, options=options,
    )
