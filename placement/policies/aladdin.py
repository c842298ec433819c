"""Aladdin's placement: the best-fitting feasible worker, or none (the request waits).

Filter -> rank -> verify, over a `WorkerTable` of per-worker aggregates:
1. Filter (vectorized): drop workers failing a necessary condition: TTFT (exact: wait so far
   + queued prefill + own prefill), KV in use now + the new prompt within capacity, and a lower
   bound of the next decode step within the ATGT SLOs.
2. Rank by the best-fit score: the normalized leftovers of KV and ATGT after placing, from
   step-independent bounds (KV: the sum of every resident's and the newcomer's upper final
   size; ATGT: a decode step of all of them at that size). Smallest first: the tightest fit.
   Workers whose KV bound is within capacity are "safe"; the others "tight".
3. Verify in rank order, safe workers first. A safe worker is accepted outright when the
   bounds prove it feasible (no resident past its upper estimate, the bounding decode step with
   the newcomer within the SLO); otherwise the exact check (`placement.feasibility.check`)
   decides. The first feasible worker wins. `tight_checks` > 0 first tries that many tight
   workers exactly (they may fit at the exact projected peak and pack tighter, at ~one
   projection each). If no safe worker fits, every tight one is checked in order, so "nothing
   fits" is always exact.

When nothing fits, `on_infeasible="wait"` returns None (the caller queues the request and
counts it as demand); `"least-violation"` returns the worker with the smallest normalized
shortfall, estimated from the table's bounds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from placement.feasibility import check
from placement.policies.worker_table import WorkerTable
from placement.state import Request, WorkerState

ON_INFEASIBLE = ("wait", "least-violation")


class AladdinPolicy:
    """Best-fit placement under KV, ATGT and TTFT feasibility (arXiv 2405.06856)."""

    name = "aladdin"

    def __init__(self, on_infeasible: str = "wait", tight_checks: int = 0) -> None:
        if on_infeasible not in ON_INFEASIBLE:
            raise ValueError(f"on_infeasible must be one of {ON_INFEASIBLE}, got {on_infeasible!r}")
        if tight_checks < 0:
            raise ValueError("tight_checks must be >= 0")
        self.on_infeasible = on_infeasible
        self.tight_checks = tight_checks
        self.table = WorkerTable()

    def choose(self, request: Request, workers: Sequence[WorkerState], now_s: float) -> WorkerState | None:
        """The feasible worker where `request` fits best; None (or the least-violating worker)
        when none is feasible."""
        table = self.table
        table.sync(workers)
        if not workers:
            return None
        own_prefill_s = table.per_row(lambda p: p.ttft_s(request.input_len))
        # same association as feasibility.check: wait + (queued + own)
        ttft_s = (now_s - request.arrival_s) + (table.queued_prefill_s + own_prefill_s)
        atgt_slo = np.minimum(table.min_slo_atgt_s, request.slo_atgt_s)
        eligible = (
            (ttft_s <= request.slo_ttft_s)
            & (table.step_floor_s <= atgt_slo)
            & (table.kv_used_floor + request.input_len <= table.capacity)
        )
        final = request.upper_final_tokens
        kv_left = (table.capacity - (table.kv_final + final)) / table.capacity
        score = kv_left + (atgt_slo - table.step_bound_s) / atgt_slo
        safe = eligible & (kv_left >= 0)
        tight = eligible & ~safe

        if self.tight_checks:
            chosen = self._first_feasible(np.where(tight, score, math.inf), request, now_s, self.tight_checks)
            if chosen is not None:
                return chosen
        chosen = self._first_feasible(np.where(safe, score, math.inf), request, now_s, len(workers), atgt_slo)
        if chosen is None:
            chosen = self._first_feasible(np.where(tight, score, math.inf), request, now_s, len(workers))
        if chosen is None and self.on_infeasible == "least-violation":
            chosen = self._least_violating(request, workers, kv_left, ttft_s, atgt_slo)
        return chosen

    def _first_feasible(
        self, key: np.ndarray, request: Request, now_s: float, limit: int, atgt_slo: np.ndarray | None = None
    ) -> WorkerState | None:
        """The first worker in `key` order (inf = skip) that is feasible, trying at most `limit`.
        With `atgt_slo` given the rows are KV-safe and may be accepted on the bounds alone."""
        table = self.table
        final = request.upper_final_tokens
        for _ in range(limit):
            row = int(np.argmin(key))
            if key[row] == math.inf:
                return None
            key[row] = math.inf
            worker = table.workers[row]
            if not worker.accepting:
                continue
            if (
                atgt_slo is not None
                and worker.steps <= worker.min_upper_end_step
                and worker.profile.decode_step_s(len(worker.residents) + 1, worker.kv_final_tokens + final)
                <= atgt_slo[row]
            ):
                return worker
            if check(worker, request, now_s).feasible:
                return worker
        return None

    def _least_violating(
        self,
        request: Request,
        workers: Sequence[WorkerState],
        kv_left: np.ndarray,
        ttft_s: np.ndarray,
        atgt_slo: np.ndarray,
    ) -> WorkerState | None:
        table = self.table
        violation = np.maximum.reduce(
            [
                -kv_left,
                (ttft_s - request.slo_ttft_s) / request.slo_ttft_s,
                (table.step_floor_s - atgt_slo) / atgt_slo,
            ]
        )
        accepting = np.fromiter((w.accepting for w in workers), dtype=bool, count=len(workers))
        if not accepting.any():
            return None
        violation[~accepting] = np.inf
        return workers[int(np.argmin(violation))]
