"""Aladdin's placement: the best-fitting feasible worker, or none (the request waits).

Filter -> rank -> verify, over a `WorkerTable` of per-worker aggregates:
1. Filter (vectorized): drop workers failing a necessary condition: TTFT (exact: wait so far
   + queued prefill + own prefill), KV in use now + the new prompt within capacity, and a lower
   bound of the next decode step, stretched by the worker's prefill share with the newcomer's
   prefill (`placement.interference.token_interval_s`, as in the exact check), within the
   ATGT SLOs.
   With chunked prefill the TTFT filter is a necessary condition only (its decode step is the
   one at the row's last refresh); accepting a worker then takes its exact TTFT.
2. Rank by the best-fit score: the normalized leftovers of KV and ATGT after placing, from
   step-independent bounds (KV: the sum of every resident's and the newcomer's upper final
   size; ATGT: a decode step of all of them at that size, stretched the same way). Smallest
   first: the tightest fit. Workers whose KV bound is within capacity are "safe"; the others
   "tight".
3. Verify in rank order: safe workers within the ATGT bound, then the other safe ones, then the
   tight ones. A safe worker is accepted outright when the bounds prove it feasible (no
   resident past its upper estimate, the stretched bounding step with the newcomer within the
   SLO) and its prefill is not expected to break a resident's ATGT (`stall_risk`, computed
   for the worker at hand only); otherwise the exact check (`placement.feasibility.check`)
   decides. The first feasible worker wins. `tight_checks` > 0 first tries that many tight
   workers exactly (they may fit at the exact projected peak and pack tighter, at ~one
   projection each). If no safe worker fits, every tight one is checked in order, so "nothing
   fits" is always exact.

Every comparison above (filter, bounds, score, exact check) is against the policy's
`PackingBudget`: shares of the SLOs, not the SLOs themselves. Best fit packs each worker to its
limit, so what the feasibility model only estimates (the prefill share, replies longer than
their upper estimates) decides whether the busiest workers miss, however many workers there
are; the shares follow the attainment measured on finished requests
(`placement.attainment_feedback`) instead of a constant tuned on one trace.

Prefix cache (workers that keep one, `WorkerState.prefix_cache`): each row's prefill, TTFT and
the newcomer's KV count only what that worker's cache does not hold, and the ranking puts the
workers holding the longest cached prefix first, best fit among equals: the prefill a hit
skips is work no worker does, which packing cannot save, and the checks above keep the hit
from costing an SLO (affinity only among feasible workers).

A request whose TTFT can no longer be met on any worker (wait so far + its own prefill over
the SLO) is placed by KV and ATGT alone: waiting cannot help it, and it should still be served
within its ATGT. When nothing fits, `on_infeasible="wait"` returns None (the caller queues the request and
counts it as demand); `"least-violation"` returns the worker with the smallest normalized
shortfall, estimated from the table's bounds. With `last_chance` (admission's twin for a
request that cannot wait any longer) its prefill may stall the residents up to
`PackingBudget.last_chance_risk` (placement.admission): refusing it would be a sure miss.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from placement.feasibility import check, stall_risk
from placement.interference import token_interval_s
from placement.packing_budget import PackingBudget
from placement.policies.worker_table import WorkerTable
from placement.policy import Decision
from placement.state import Request, WorkerState

ON_INFEASIBLE = ("wait", "least-violation")
# Exact checks (projections, stall tests) one decision may make before it gives up on the rest
# of the ranking: on a cluster where most workers fail the stall test, checking all of 1,000
# costs ~100 ms, and the best-ranked 64 failing says the cluster has no room that waiting
# would not give sooner.
MAX_EXACT_CHECKS = 64
# relative slack on the vectorized ATGT prefilter: its prefill share is computed in another
# order than the exact check's, and a necessary condition must not drop a worker on rounding
ROUNDING_SLACK = 1e-9


def _at(values: np.ndarray | int, row: int) -> int:
    """A per-row integer column's value at `row` (a scalar stands for every row)."""
    return values if isinstance(values, int) else int(values[row])


def _longest_hit_first(score: np.ndarray, cached: np.ndarray) -> np.ndarray:
    """A ranking key (smallest first) ordering rows by most cached prompt tokens, then by
    `score`: each row's position in that order."""
    order = np.lexsort((score, -cached))
    rank = np.empty_like(score)
    rank[order] = np.arange(len(order), dtype=float)
    return rank


class _Scratch:
    """Arrays a decision writes into (numpy `out=`), reused so a decision allocates little."""

    def __init__(self, n: int) -> None:
        self.size = n
        self.own_prefill = np.empty(n)
        self.alone = np.empty(n)
        self.atgt_slo = np.empty(n)
        self.stretch = np.empty(n)
        self.step_floor = np.empty(n)  # step_floor_s stretched
        self.ttft = np.empty(n)
        self.kv_left = np.empty(n)
        self.atgt_bound = np.empty(n)
        self.score = np.empty(n)
        self.eligible = np.empty(n, dtype=bool)
        self.safe = np.empty(n, dtype=bool)
        self.bounded = np.empty(n, dtype=bool)
        self.passed = np.empty(n, dtype=bool)


class AladdinPolicy:
    """Best-fit placement under KV, ATGT, prefill-stall and TTFT feasibility (arXiv 2405.06856)."""

    name = "aladdin"

    def __init__(
        self, on_infeasible: str = "wait", tight_checks: int = 0, atgt_margin: float | None = None,
        budget: PackingBudget | None = None, prefix_aware: bool = True, spread: bool = False,
        last_chance: bool = False,
    ) -> None:
        """`budget` is shared with whoever adapts it (default: a fresh adaptive one);
        `atgt_margin` fixes its ATGT share instead (an expert override, in (0, 1]).
        `prefix_aware`: the cluster keeps a prefix cache per worker for it to read (where the
        engines cache prefixes); False places as if no prompt were ever cached. `spread`: of
        the feasible workers take the one with the most room (worst fit) rather than the least
        (best fit, which empties workers for scale-down): at a fixed size it keeps headroom on
        every worker for bursts (BENCHMARKS.md, "Placement at cluster scale"); not yet the
        default, which the workload matrix has to decide. `last_chance`: see the module
        docstring."""
        if on_infeasible not in ON_INFEASIBLE:
            raise ValueError(f"on_infeasible must be one of {ON_INFEASIBLE}, got {on_infeasible!r}")
        if tight_checks < 0:
            raise ValueError("tight_checks must be >= 0")
        if budget is not None and atgt_margin is not None:
            raise ValueError("give a budget or an atgt_margin, not both")
        if budget is None:
            budget = PackingBudget.for_target(atgt_margin=atgt_margin)
        self.on_infeasible = on_infeasible
        self.tight_checks = tight_checks
        self.uses_prefix_cache = prefix_aware
        self.spread = spread
        self.last_chance = last_chance
        self.budget = budget
        self.table = WorkerTable()
        self._scratch = _Scratch(0)
        self._exact_left = MAX_EXACT_CHECKS  # of the decision under way

    def choose(self, request: Request, workers: Sequence[WorkerState], now_s: float) -> WorkerState | None:
        """The feasible worker where `request` fits best; None (or the least-violating worker)
        when none is feasible. A request that can no longer meet its TTFT SLO anywhere is
        placed by KV and ATGT alone."""
        return self.decide(request, workers, now_s).worker

    def decide(self, request: Request, workers: Sequence[WorkerState], now_s: float) -> Decision:
        """`choose`, with what the choice promised (`placement.policy.Decision`: infeasible
        when it took the least violation, TTFT lost when placed by KV and ATGT alone)."""
        table = self.table
        table.sync(workers)
        n = len(workers)
        if not n:
            return Decision(None, False)
        budget = self.budget
        if self._scratch.size != n:
            self._scratch = _Scratch(n)
        buf = self._scratch
        hits = table.prefix_hits(request, workers)
        cached, discount = (0, 0) if hits is None else hits
        own_prefill_s = table.prefill_s(request.input_len, cached, out=buf.own_prefill)
        # its TTFT with nothing queued: own prefill plus the serving path's fixed latency (its
        # first token comes with its first sequence's)
        alone_s = np.add(own_prefill_s, table.serving_overhead_s, out=buf.alone)
        if request.sequences > 1:  # each sequence's prefill stalls the residents
            np.multiply(own_prefill_s, request.sequences, out=own_prefill_s)
        waited_s = now_s - request.arrival_s
        # a TTFT that no worker could meet even with nothing queued is lost: place by KV and
        # ATGT alone rather than never
        need_ttft = waited_s + float(alone_s.min()) <= request.slo_ttft_s
        # the ATGT budget every step below packs to (x 1.0 is exact: a share of 1 is the SLO)
        atgt_slo = np.minimum(table.min_slo_atgt_s, request.slo_atgt_s, out=buf.atgt_slo)
        np.multiply(atgt_slo, budget.atgt_share, out=atgt_slo)
        # token interval per second of decode step (it is linear in the step), with the
        # newcomer's prefill in the worker's prefill share as in feasibility.check
        stretch = self._stretch(table.prefill_share_placing(now_s, own_prefill_s, out=buf.stretch))
        step_floor = np.multiply(table.step_floor_s, stretch, out=buf.step_floor)
        eligible = np.less_equal(step_floor, atgt_slo * (1 + ROUNDING_SLACK), out=buf.eligible)
        # KV in use + the new prompt within capacity, as free KV (exact integers in float64)
        eligible &= np.greater_equal(table.kv_free_ceiling, request.prompt_tokens_all - discount, out=buf.passed)
        # same association as feasibility.check: wait + (queued + own)
        ttft_s = np.add(table.queued_prefill_s, alone_s, out=buf.ttft)
        np.add(ttft_s, table.chunked_extra_s(request.input_len - cached), out=ttft_s)
        if table.late_rows:  # the engine part (all but the overhead) at the queue's pace
            np.subtract(ttft_s, table.serving_overhead_s, out=ttft_s)
            np.multiply(ttft_s, table.lateness, out=ttft_s)
            np.add(ttft_s, table.serving_overhead_s, out=ttft_s)
        np.add(waited_s, ttft_s, out=ttft_s)
        if need_ttft:
            eligible &= np.less_equal(ttft_s, request.slo_ttft_s * budget.ttft_share, out=buf.passed)
        final = request.upper_final_tokens_all
        # (capacity - (kv_final + final)) / capacity, the integer part exact either way
        kv_left = np.subtract(table.kv_free_final, final - discount, out=buf.kv_left)
        np.divide(kv_left, table.capacity, out=kv_left)
        # bound of the time between tokens with the newcomer: the step of everyone at their
        # final sizes, stretched by the prefills
        atgt_bound = np.multiply(table.step_bound_per_token_s, final, out=buf.atgt_bound)
        np.add(table.step_bound_s, atgt_bound, out=atgt_bound)
        np.multiply(atgt_bound, stretch, out=atgt_bound)
        score = np.subtract(atgt_slo, atgt_bound, out=buf.score)
        np.divide(score, atgt_slo, out=score)
        np.add(kv_left, score, out=score)
        safe = np.greater_equal(kv_left, 0, out=buf.safe)
        safe &= eligible

        self._exact_left = MAX_EXACT_CHECKS
        find = functools.partial(
            self._first_feasible, workers=workers, request=request, final=final, now_s=now_s,
            need_ttft=need_ttft, own_prefill_s=own_prefill_s, cached=cached,
        )
        if self.spread:
            np.negative(score, out=score)
        rank = score if hits is None else _longest_hit_first(score, cached)
        if self.tight_checks:
            chosen = find(np.where(eligible & ~safe, rank, math.inf), limit=self.tight_checks)
            if chosen is not None:
                return Decision(chosen, True, not need_ttft, risked=self.last_chance)
        # KV-safe workers within the ATGT bound first: unless a resident is overdue they are
        # proven feasible without an exact projection; then the other KV-safe ones, then the
        # tight ones, so None means nothing is feasible (each group built only when reached)
        bounded = np.less_equal(atgt_bound, atgt_slo, out=buf.bounded)
        bounded &= safe
        chosen = find(np.where(bounded, rank, math.inf), limit=n, atgt_slo=atgt_slo)
        if chosen is None:
            chosen = find(np.where(safe & ~bounded, rank, math.inf), limit=n, atgt_slo=atgt_slo)
        if chosen is None:
            chosen = find(np.where(eligible & ~safe, rank, math.inf), limit=n)
        if chosen is not None:
            return Decision(chosen, True, not need_ttft, risked=self.last_chance)
        if self.on_infeasible == "least-violation":
            ttft_slo = request.slo_ttft_s * budget.ttft_share
            ttft_over = (ttft_s - ttft_slo) / ttft_slo if need_ttft else 0.0
            atgt_over = (step_floor - atgt_slo) / atgt_slo
            # pairwise: ttft_over is a scalar when the TTFT is lost (np.maximum.reduce over a
            # list mixing it with arrays raised ValueError)
            chosen = self._least_violating(workers, np.maximum(np.maximum(-kv_left, ttft_over), atgt_over), ttft_s)
        return Decision(chosen, False, not need_ttft, unfit=any(not w.residents for w in workers))

    @staticmethod
    def _stretch(prefill_share: np.ndarray) -> np.ndarray:
        """`token_interval_s(1.0, prefill_share)`, in place: 1 / (1 - share), inf where the
        prefills take all the time. The masked division that handles the latter costs ~5 us
        over 1,000 rows, so it runs only when some row needs it."""
        free = np.subtract(1.0, prefill_share)
        if free.min() > 0:
            return np.divide(1.0, free, out=prefill_share)
        prefill_share[:] = token_interval_s(1.0, prefill_share)
        return prefill_share

    def _first_feasible(
        self,
        key: np.ndarray,
        *,
        workers: Sequence[WorkerState],
        request: Request,
        final: int,
        now_s: float,
        need_ttft: bool,
        own_prefill_s: np.ndarray,
        cached: np.ndarray | int,
        limit: int,
        atgt_slo: np.ndarray | None = None,
    ) -> WorkerState | None:
        """The first worker in `key` order (inf = skip) that is feasible (TTFT aside unless
        `need_ttft`), trying at most `limit`. With `atgt_slo` given the rows are KV-safe and
        passed the TTFT filter, so they may be accepted on the bounds alone. `final` is the
        request's upper final size (all sequences), `own_prefill_s` its prefill time on each row's worker, `cached`
        its prompt tokens cached there."""
        budget = self.budget
        stall_limit = budget.last_chance_risk if self.last_chance else budget.stall_risk
        for _ in range(limit):
            row = int(key.argmin())
            if key[row] == math.inf:
                return None
            key[row] = math.inf
            worker = workers[row]
            if not worker.accepting:
                continue
            if atgt_slo is not None and worker.steps <= worker.min_upper_end_step:
                # a step bound >= its peak. The stall risk over every step from now's (with the
                # newcomer) to the bound is at most the risk at the peak, which lies between:
                # above the limit, the row fails as the exact check would (tested first: most
                # rows of a loaded cluster fail here, and it needs no TTFT or projection)
                own_s = float(own_prefill_s[row])
                step_bound = worker.profile.decode_step_s(worker.resident_sequences + request.sequences,
                                                          worker.final_context_tokens + final)
                step_now = worker.profile.decode_step_s(
                    worker.resident_sequences + request.sequences,
                    worker.context_tokens + worker.queued_prompt_tokens + request.prompt_tokens_all)
                floor = stall_risk(worker, own_s, step_now, now_s, budget, step_hi_s=step_bound, stop_above=stall_limit)
                if floor > stall_limit:
                    continue
                # above 0 the exact check decides. At 0, with KV passing at the bound, the ATGT
                # (same prefill share and stretch as check()) and the TTFT too, a risk of 0 at
                # the bound accepts it (no resident the stall can touch at all: that does not
                # depend on the step). With chunked prefill the filter's TTFT read the decode
                # step at the row's last refresh, which has grown since: only the exact TTFT
                # proves it
                if floor == 0.0:
                    ttft_ok = (not need_ttft or worker.token_budget is None
                               or now_s - request.arrival_s
                               + worker.ttft_s(request.input_len, cached_tokens=_at(cached, row))
                               <= request.slo_ttft_s * budget.ttft_share)
                    share = worker.prefill_share_placing(now_s, own_s)
                    if (ttft_ok and token_interval_s(step_bound, share) <= atgt_slo[row]
                            and stall_risk(worker, own_s, step_bound, now_s, budget, stop_above=0.0) == 0.0):
                        return worker
            if self._exact_left <= 0:
                return None
            self._exact_left -= 1
            fit = check(worker, request, now_s, budget, stall_limit=stall_limit)
            if fit.feasible if need_ttft else fit.feasible_apart_from_ttft:
                return worker
        return None

    def _least_violating(
        self, workers: Sequence[WorkerState], violation: np.ndarray, ttft_s: np.ndarray
    ) -> WorkerState | None:
        """The accepting worker with the smallest estimated violation, the earliest first token
        among equals (a prompt whose prefill alone outlasts the prefill window violates the
        ATGT bound by inf on every worker: the first row would take them all); None if none
        accepts."""
        accepting = np.fromiter((w.accepting for w in workers), dtype=bool, count=len(workers))
        if not accepting.any():
            return None
        order = np.lexsort((ttft_s, violation, ~accepting))
        return workers[int(order[0])]
