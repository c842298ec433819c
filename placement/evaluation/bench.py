"""Decision-time benchmark of a placement policy on a large, realistic cluster state.

State: `workers` workers of one profile holding `inflight` requests in all, spread unevenly
(per-worker shares drawn from a Gamma(2) mix, so some workers are nearly idle and some near
their ATGT or KV limit). Lengths are ShareGPT-like log-normals; the predictor is modelled as
the true length times log-normal noise, with the upper estimate at 2x the mean. Each resident
has generated a uniform fraction of its true length (and was admitted that many tokens ago at
the ATGT SLO, which sets the workers' prefill load); 2% still wait for their prefill.

Loop: a new request arrives, the policy chooses (timed, nothing else is), the request is
admitted where chosen, one random resident finishes elsewhere and a random worker advances a
few decode steps, so the state keeps changing as in serving.

With `prefix_share` > 0 every worker keeps placement's prefix cache (one directory for the
cluster) and requests belong to conversations: that share of them continues an earlier
conversation, whose prompt blocks (16 tokens, the GPU engines' block size) it shares.
"""

from __future__ import annotations

import math
from collections import deque
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

from placement.policy import PlacementPolicy
from placement.policies import make_policy
from placement.prefix_cache import Prefix, PrefixCache, PrefixDirectory
from placement.state import Request, WorkerState
from predictors.latency import load_profile_family

INPUT_MEAN, INPUT_CV = 250.0, 1.5
OUTPUT_MEAN, OUTPUT_CV = 230.0, 1.0
PREDICTION_NOISE_SIGMA = 0.3
UPPER_OVER_MEAN = 2.0
QUEUED_FRACTION = 0.02
# decisions (1 ms apart) from a placement to its prefill, and between two decode steps of
# every worker, in the `engine_time` loop
PREFILL_AFTER = 30
DECODE_EVERY = 10
PREFIX_BLOCK_TOKENS = 16


@dataclass(frozen=True)
class BenchResult:
    policy: str
    profile: str
    workers: int
    inflight: int
    decisions: int
    placed: int
    p50_us: float
    p99_us: float
    mean_us: float
    decisions_per_s: float

    def to_dict(self) -> dict:
        return asdict(self)


class _Arrivals:
    """ShareGPT-like requests with noisy predictions (deterministic under a seed)."""

    def __init__(self, seed: int, slo_ttft_s: float, slo_atgt_s: float, max_len: int,
                 prefix_share: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.count = 0
        self.slo = (slo_ttft_s, slo_atgt_s)
        self.max_len = max_len
        self.prefix_share = prefix_share

    def _lognormal(self, mean: float, cv: float) -> float:
        sigma2 = math.log1p(cv * cv)
        return self.rng.lognormvariate(math.log(mean) - sigma2 / 2, math.sqrt(sigma2))

    def next(self, now_s: float) -> tuple[Request, int]:
        """A request and its true output length."""
        self.count += 1
        output_len = max(1, min(int(self._lognormal(OUTPUT_MEAN, OUTPUT_CV)), self.max_len // 2))
        input_len = max(1, min(int(self._lognormal(INPUT_MEAN, INPUT_CV)), self.max_len - output_len))
        mean = max(1.0, output_len * self.rng.lognormvariate(0.0, PREDICTION_NOISE_SIGMA))
        request = Request(
            id=f"q{self.count}", arrival_s=now_s, input_len=input_len, pred_mean=mean,
            pred_upper=mean * UPPER_OVER_MEAN, slo_ttft_s=self.slo[0], slo_atgt_s=self.slo[1],
            prefix=self._prefix(input_len) if self.prefix_share else None,
        )
        return request, output_len

    def _prefix(self, input_len: int) -> Prefix:
        """Blocks of a new conversation, or (with probability `prefix_share`) of an earlier one."""
        continues = self.count > 1 and self.rng.random() < self.prefix_share
        conversation = self.rng.randrange(1, self.count) if continues else self.count
        blocks = input_len // PREFIX_BLOCK_TOKENS
        return Prefix(PREFIX_BLOCK_TOKENS, tuple(hash((conversation, i)) for i in range(blocks)))


def build_cluster(
    workers: int, inflight: int, family: str = "llama-2-7b-a100", tp: int = 1, seed: int = 0,
    slo_ttft_s: float = 1.0, slo_atgt_s: float = 0.05, prefix_share: float = 0.0,
) -> tuple[list[WorkerState], _Arrivals]:
    """The benchmark's starting state and the arrival stream that continues it."""
    profile = load_profile_family(family).profile(tp)
    arrivals = _Arrivals(seed, slo_ttft_s, slo_atgt_s, profile.max_model_len, prefix_share)
    directory = PrefixDirectory() if prefix_share else None
    shares = np.random.default_rng(seed).gamma(2.0, 1.0, workers)
    counts = np.random.default_rng(seed + 1).multinomial(inflight, shares / shares.sum())
    cluster = []
    for w, count in enumerate(counts):
        worker = WorkerState(id=f"w{w}", profile=profile,
                             prefix_cache=PrefixCache(directory) if directory is not None else None)
        generated = {}
        for _ in range(count):
            request, output_len = arrivals.next(0.0)
            if arrivals.rng.random() >= QUEUED_FRACTION:
                generated[request.id] = int(arrivals.rng.random() * output_len)
            # admitted as long ago as its tokens took at the ATGT SLO, so the worker's prefill
            # load is that of requests arriving over the residents' lifetimes, not all at once
            worker.admit(request, now_s=-generated.get(request.id, 0) * slo_atgt_s)
        # start the longest-running first and advance between starts (lockstep decoding)
        order = sorted(generated, key=generated.get, reverse=True)
        for rid, after in zip(order, order[1:] + [None]):
            worker.start_decode(rid)
            worker.advance(generated[rid] - (generated[after] if after else 0))
        cluster.append(worker)
    return cluster, arrivals


def decision_loop(
    policy: PlacementPolicy,
    cluster: list[WorkerState],
    arrivals: _Arrivals,
    count: int,
    prepare: Callable[[int, Request, float], None] | None = None,
    engine_time: bool = False,
) -> Iterator[tuple[WorkerState | None, int]]:
    """Make `count` placement decisions on a bench state, yielding (chosen worker, ns spent in
    `choose`) for each. After each decision the request is admitted, a request finishes on a
    random worker and a random worker decodes 0-3 steps, so the state keeps changing. With
    `engine_time` the workers also keep pace with the clock as engines would: a placed
    request's prefill runs PREFILL_AFTER decisions later, every worker decodes a step every
    DECODE_EVERY decisions (a different 1/DECODE_EVERY of them after each decision) and its
    residents end at their upper estimates (else queues only grow and decodes fall ever further
    behind the clock, and a stall-aware policy rightly finds every worker's residents at risk).
    `prepare(i, request, now_s)` may alter a request before it is placed."""
    rng = arrivals.rng
    now_s = 0.0
    pending: deque[tuple[int, WorkerState, str]] = deque()  # (decision due, worker, request id)
    for i in range(count):
        request, _ = arrivals.next(now_s)
        if prepare is not None:
            prepare(i, request, now_s)
        start = time.perf_counter_ns()
        worker = policy.choose(request, cluster, now_s)
        elapsed = time.perf_counter_ns() - start
        yield worker, elapsed
        if worker is not None:
            worker.admit(request, now_s)
        finished = rng.choice(cluster)
        if finished.residents:
            finished.remove(next(iter(finished.residents)))
        if engine_time:
            if worker is not None:
                pending.append((i + PREFILL_AFTER, worker, request.id))
            while pending and pending[0][0] <= i:
                _, prefilled, rid = pending.popleft()
                resident = prefilled.residents.get(rid)
                if resident is not None and resident.decode_from_step is None:
                    prefilled.start_decode(rid, now_s)
            # engines step independently: a tenth of the workers each decision, in turn, rather
            # than all at once (a live actor hears of steps one report at a time)
            for w in cluster[i % DECODE_EVERY::DECODE_EVERY]:
                w.advance(1)
                for rid in [rid for rid, r in w.residents.items()
                            if r.decode_from_step is not None and w.generated(rid) >= r.request.upper_output_tokens]:
                    w.remove(rid)

        rng.choice(cluster).advance(rng.randint(0, 3))
        now_s += 0.001


def run(
    policy_name: str = "aladdin", workers: int = 1000, inflight: int = 50_000, decisions: int = 5000,
    warmup: int = 200, seed: int = 0, family: str = "llama-2-7b-a100", tp: int = 1, prefix_share: float = 0.0,
) -> BenchResult:
    """Time `decisions` calls of the policy's `choose` (after `warmup` untimed ones)."""
    cluster, arrivals = build_cluster(workers, inflight, family, tp, seed, prefix_share=prefix_share)
    policy = make_policy(policy_name, seed=seed)
    timings = []
    placed = 0
    for i, (worker, elapsed) in enumerate(decision_loop(policy, cluster, arrivals, warmup + decisions, engine_time=True)):
        if i >= warmup:
            timings.append(elapsed)
            placed += worker is not None
    ns = np.array(timings, dtype=float)
    return BenchResult(
        policy=policy_name, profile=f"{family} tp{tp}", workers=workers, inflight=inflight,
        decisions=decisions, placed=placed,
        p50_us=float(np.percentile(ns, 50) / 1e3), p99_us=float(np.percentile(ns, 99) / 1e3),
        mean_us=float(ns.mean() / 1e3), decisions_per_s=float(decisions / (ns.sum() / 1e9)),
    )
