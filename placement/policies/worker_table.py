"""Per-worker aggregates as numpy arrays, so a policy can filter and rank 1000 workers at once.

The table watches its workers (`WorkerState.watch`) and recomputes only the rows of workers that
changed (admission, decode start, removal, estimate change). `advance` is not reported, so every
column is either independent of the step counter or a bound that stays valid as steps advance
(noted per column). The prefill load decays with time: it is kept referred to the table's
epoch, so reading it at any time is one scalar decay times a column.

Columns are kept in the form the policy compares them (free KV rather than KV used), so a
decision runs as few numpy operations over all rows as possible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from placement.state import PREFILL_WINDOW_S, ChangeLog, Request, WorkerState, decay
from predictors.latency.profile import chunked_extra_s, prefill_seconds

# Rebase the epoch once the loads referred to it have grown by e^REBASE_AFTER_WINDOWS, long
# before float64 overflows.
REBASE_AFTER_WINDOWS = 50.0


class WorkerTable:
    """Columns over the workers of the last `sync`, row i = workers[i]."""

    def __init__(self) -> None:
        self.workers: list[WorkerState] = []
        self._rows: dict[int, int] = {}  # id(worker) -> row
        self._log = ChangeLog()
        self.epoch_s = 0.0
        self._resize(0)

    def _resize(self, n: int) -> None:
        # each row's prefill coefficients and serving overhead: every worker may have its own
        # (corrected) profile, and a decision evaluates them all at once
        self.prefill_coefficients = np.zeros((4, n))  # c0, cp, c1, c2
        self.serving_overhead_s = np.zeros(n)
        self.capacity = np.zeros(n)
        # capacity minus the sum of residents' upper final sizes (the projected KV peak's upper
        # bound while no resident is past its upper estimate); integers, so exact in float64
        self.kv_free_final = np.zeros(n)
        # capacity minus the KV in use when the row was refreshed: an upper bound of the free
        # KV later, as usage only grows with steps
        self.kv_free_ceiling = np.zeros(n)
        # time to prefill what is queued ahead of a new request, and its tokens
        self.queued_prefill_s = np.zeros(n)
        self.queued_tokens = np.zeros(n)
        # chunked prefill: prompt tokens per iteration beside the decoding batch (0: the worker
        # prefills first), and that batch's step (a chunked prompt waits one per iteration)
        self.chunk_tokens = np.zeros(n)
        self.step_now_s = np.zeros(n)
        self.chunked_rows = 0
        # WorkerState.queue_lateness, and how many rows have one other than 1
        self.lateness = np.ones(n)
        self.late_rows = 0
        # decode step of residents + 1 over the KV in use at refresh: a lower bound of the next
        # step's time
        self.step_floor_s = np.zeros(n)
        # decode step of residents + 1 at their final sizes (final_context_tokens): an upper
        # bound without the newcomer's tokens
        self.step_bound_s = np.zeros(n)
        # how much step_bound_s grows per context token (the step is affine in context tokens),
        # so the bound with a newcomer's final tokens is one multiply-add away
        self.step_bound_per_token_s = np.zeros(n)
        self.min_slo_atgt_s = np.full(n, math.inf)
        # 1 where the worker has residents (a newcomer's prefill stalls them), else 0
        self.occupied = np.zeros(n)
        # rows whose worker keeps a prefix cache (placement's belief of its engine's)
        self.cached_rows = 0
        self._cache_rows: dict[int, int] = {}  # id(worker's prefix cache) -> row
        self._directory = None  # the caches' PrefixDirectory, if they share one
        # the worker's decayed prefill load (WorkerState.prefill_load_s) as of epoch_s
        self.prefill_load_at_epoch_s = np.zeros(n)

    def prefill_share(
        self, now_s: float, extra_prefill_s: float | np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """`WorkerState.prefill_share(now_s, extra)` of every row (equal up to rounding), written
        to `out` when given."""
        self._rebase_before(now_s)
        share = np.multiply(self.prefill_load_at_epoch_s, decay(now_s - self.epoch_s), out=out)
        np.add(share, extra_prefill_s, out=share)
        return np.divide(share, PREFILL_WINDOW_S, out=share)

    def prefill_share_placing(self, now_s: float, own_prefill_s: np.ndarray, out: np.ndarray) -> np.ndarray:
        """`WorkerState.prefill_share_placing(now_s, own)` of every row, written to `out` (which
        must not be `own_prefill_s`)."""
        extra = np.multiply(own_prefill_s, self.occupied)
        return self.prefill_share(now_s, extra, out=out)

    def _rebase_before(self, t_s: float) -> None:
        """Move the epoch to `t_s` if loads read at `t_s` would be scaled by too large a factor."""
        if t_s - self.epoch_s > REBASE_AFTER_WINDOWS * PREFILL_WINDOW_S:
            self.prefill_load_at_epoch_s *= decay(t_s - self.epoch_s)
            self.epoch_s = t_s

    def sync(self, workers: Sequence[WorkerState]) -> None:
        """Bring the columns up to date with `workers`: a new list of workers is read in full,
        the same one only where its workers reported changes.

        "The same" is list equality, which CPython checks at C speed with an identity shortcut
        per item (comparing 1,000 workers by identity in Python took ~25-35 us a decision). A
        worker that is a distinct object but equal in value to the one in its row (every field
        but its watchers) has the same configuration and load, so the row describes it as well:
        its next change makes it unequal and the list is read again. Rows are therefore right
        for `workers`; callers take the worker objects from `workers`, not from `self.workers`.
        """
        if not isinstance(workers, list):
            workers = list(workers)
        if workers != self.workers:
            self._log = ChangeLog()  # the old log, and with it the old watches, are dropped
            self.workers = list(workers)
            self._rows = {id(w): row for row, w in enumerate(self.workers)}
            self.profiles = []
            self._resize(len(workers))
            for row, worker in enumerate(self.workers):
                worker.watch(self._log)
                self._refresh(row, worker)
            caches = [w.prefix_cache for w in self.workers if w.prefix_cache is not None]
            self.cached_rows = len(caches)
            self._cache_rows = {id(w.prefix_cache): row for row, w in enumerate(self.workers)
                                if w.prefix_cache is not None}
            self._directory = caches[0].directory if caches else None
            return
        changed = {id(w): w for w in self._log}
        self._log.clear()
        for key, worker in changed.items():
            self._refresh(self._rows[key], worker)

    def _refresh(self, row: int, worker: WorkerState) -> None:
        profile = worker.profile
        step_s = profile.decode.step_s  # what profile.decode_step_s calls, one call fewer
        used = worker.kv_used_tokens
        kv_final = worker.kv_final_tokens
        final_context = worker.final_context_tokens
        capacity = worker.kv_capacity_tokens
        batch = worker.resident_sequences + 1
        step_bound = step_s(batch, final_context)
        p = profile.prefill
        self.prefill_coefficients[:, row] = (p.c0_s, p.cp_s_per_prompt, p.c1_s_per_token, p.c2_s_per_token_sq)
        self.serving_overhead_s[row] = profile.serving_overhead_s
        self.capacity[row] = capacity
        self.kv_free_final[row] = capacity - kv_final
        self.kv_free_ceiling[row] = capacity - used
        self.queued_prefill_s[row] = profile.prefill.time_from_sums(
            worker.queued_prefill_tokens, worker.queued_prefill_sq, worker.queued_prefill_count
        )
        self.queued_tokens[row] = worker.queued_prefill_tokens
        self.late_rows += int(worker.queue_lateness != 1.0) - int(self.lateness[row] != 1.0)
        self.lateness[row] = worker.queue_lateness
        chunked = worker.token_budget is not None
        self.chunked_rows += int(chunked) - int(self.chunk_tokens[row] > 0)
        self.chunk_tokens[row] = max(1, worker.token_budget - worker.decode_count) if chunked else 0
        # the decoding batch's step as the queue drains, as of this refresh (the policy re-reads
        # it exactly before accepting a chunked worker)
        self.step_now_s[row] = worker.queue_drain_step_s(
            profile, worker.queued_prefill_tokens, worker.queued_prefill_count
        ) if chunked else 0.0
        self.step_floor_s[row] = step_s(batch, used)
        self.step_bound_s[row] = step_bound
        self.step_bound_per_token_s[row] = step_s(batch, final_context + 1) - step_bound
        self.min_slo_atgt_s[row] = worker.min_slo_atgt_s
        self.occupied[row] = 1.0 if worker.residents else 0.0
        self._rebase_before(worker.prefill_load_at_s)
        self.prefill_load_at_epoch_s[row] = worker.prefill_load_s * decay(self.epoch_s - worker.prefill_load_at_s)

    def chunked_extra_s(self, input_len: int) -> np.ndarray | float:
        """What chunked prefill adds to each row's TTFT for a prompt of `input_len` tokens
        (`predictors.latency.profile.chunked_extra_s`; 0 on rows that prefill first)."""
        if not self.chunked_rows:
            return 0.0
        extra = chunked_extra_s(self.prefill_coefficients[0], self.queued_tokens, input_len,
                                self.chunk_tokens, self.step_now_s)
        return np.where(self.chunk_tokens > 0, extra, 0.0)

    def prefill_s(
        self, input_len: int, cached_tokens: np.ndarray | int = 0, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Every row's prefill time of one prompt of `input_len` tokens, `cached_tokens` of them
        (per row) in its prefix cache (the profile's formula, `PrefillModel.uncached_time_s`)."""
        c0, cp, c1, c2 = self.prefill_coefficients
        if isinstance(cached_tokens, int) and cached_tokens == 0:
            return np.add(prefill_seconds(c0, cp, c1, c2, input_len, input_len * input_len, 1), 0.0, out=out)
        squares = input_len * input_len - np.square(cached_tokens)
        return np.add(prefill_seconds(c0, cp, c1, c2, input_len - cached_tokens, squares, 1), 0.0, out=out)

    def prefix_hits(self, request: Request, workers: Sequence[WorkerState]) -> tuple[np.ndarray, np.ndarray] | None:
        """Per row of `workers` (the list last synced), `WorkerState.prefix_hit(request)`: the
        prompt tokens cached there and the tokens of its KV residents' blocks hold; None when
        no row has a hit (or no worker keeps a cache)."""
        prefix = request.prefix
        if not self.cached_rows or prefix is None or not prefix.hashes:
            return None
        if self._directory is None:
            rows = range(len(workers))
        else:  # only the workers whose cache holds its first block can have a hit
            rows = [r for r in (self._cache_rows.get(id(c)) for c in self._directory.caches(prefix.hashes[0]))
                    if r is not None]
        cached, discount = np.zeros(len(workers)), np.zeros(len(workers))
        for row in rows:
            cached[row], discount[row] = workers[row].prefix_hit(request)
        if not cached.any():
            return None
        return cached, discount
